"""Guards shared by lorakit's HTTP servers on this machine (`lorakit serve`, `lorakit studio`) against other web
pages open in the user's browser.

A server on 127.0.0.1 is reachable from any page the browser shows: by DNS rebinding (a page on evil.example
points its own name at 127.0.0.1, so the browser sends `Host: evil.example`; refused by checking the Host against
LOOPBACK_HOSTS with Starlette's TrustedHostMiddleware) and by plain cross-site requests, such as a form posted
to http://127.0.0.1:7860/... (the Host is right, but the browser sends the foreign page's `Origin` and
`Sec-Fetch-Site: cross-site`; refused by SameOriginGuard).

`check_can_listen` tries the bind first, so a taken port or an unknown --host is one lorakit error with a hint
instead of a "Serving at" line followed by uvicorn's raw `[Errno 98]`.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Callable, Collection, Mapping
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from lorakit.errors import LorakitError

__all__ = ["LOOPBACK_HOSTS", "is_loopback", "trusted_hosts", "check_can_listen", "cross_site_reason",
           "SameOriginGuard"]

# The Host names a browser uses for this machine; any other name reaching a loopback server is DNS rebinding.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def is_loopback(host: str) -> bool:
    """Whether a bind address only accepts connections from this machine.

    >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("::1"), is_loopback("0.0.0.0")
    (True, True, True, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def trusted_hosts(bind_host: str) -> tuple[str, ...] | None:
    """The Host names a server bound to `bind_host` accepts: on a loopback address LOOPBACK_HOSTS and the address
    itself (anything else is DNS rebinding); None (any) elsewhere, where the machine's names are not known.

    >>> trusted_hosts("127.0.0.2")
    ('127.0.0.1', 'localhost', '::1', '[::1]', '127.0.0.2')
    >>> trusted_hosts("0.0.0.0") is None
    True
    """
    if not is_loopback(bind_host):
        return None
    return LOOPBACK_HOSTS + (() if bind_host in LOOPBACK_HOSTS else (bind_host,))


_HOST_HINT = "pass an address of this machine to --host: 127.0.0.1 (this machine only) or 0.0.0.0 (every network)"


def check_can_listen(host: str, port: int) -> None:
    """Raise a LorakitError (exit 2) with a hint unless a server can listen on host:port right now.

    Binds a socket the way uvicorn does (IPv6 when the host has a ':', SO_REUSEADDR, so a port left in
    TIME_WAIT by a server that just stopped still counts as free) and closes it at once. Another program can
    still take the port in between; uvicorn's own error then remains.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except socket.gaierror as exc:  # the name does not resolve (or not to an address of this family)
        raise LorakitError(f"cannot listen on {host}: {exc.strerror or exc}", _HOST_HINT) from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            raise LorakitError(f"port {port} on {host} is in use",
                               "pass another --port, or stop the program that listens there") from None
        if exc.errno == errno.EACCES:
            raise LorakitError(f"cannot listen on {host}:{port}: {reason}",
                               "ports below 1024 need administrator rights; pass another --port") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise LorakitError(f"cannot listen on {host}: {reason}", _HOST_HINT) from None
        raise LorakitError(f"cannot listen on {host}:{port}: {reason}",
                           "pass another --host or --port") from None


def _origin_key(origin: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of `scheme://host[:port]`, with the default port filled in; None if malformed."""
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or parts.path or parts.query or parts.username:
        return None
    return parts.scheme, parts.hostname, port or _DEFAULT_PORTS[parts.scheme]


def cross_site_reason(headers: Mapping[str, str], scheme: str) -> str | None:
    """Why a request comes from another web site than this server's own pages, or None when it does not.

    Browsers send `Origin` with every POST, PUT, PATCH and DELETE (and cross-origin fetches): it must be this
    server's own origin (`scheme://Host`). Programs (curl, the openai client) send neither header and pass.

    >>> cross_site_reason({"host": "127.0.0.1:8000", "origin": "http://127.0.0.1:8000"}, "http") is None
    True
    >>> cross_site_reason({"host": "127.0.0.1:8000", "origin": "https://evil.example"}, "http")
    "Origin 'https://evil.example' is not this server's origin 'http://127.0.0.1:8000'"
    >>> cross_site_reason({"host": "127.0.0.1:8000", "sec-fetch-site": "cross-site"}, "http")
    'the browser marked it as sent by another site (Sec-Fetch-Site: cross-site)'
    """
    own = f"{scheme}://{headers.get('host', '')}"
    origin = headers.get("origin")
    if origin is not None and (_origin_key(origin) is None or _origin_key(origin) != _origin_key(own)):
        return f"Origin '{origin}' is not this server's origin '{own}'"
    if headers.get("sec-fetch-site", "").strip().lower() == "cross-site":
        return "the browser marked it as sent by another site (Sec-Fetch-Site: cross-site)"
    return None


class SameOriginGuard:
    """ASGI middleware: an HTTP request with one of `methods` (None: any) that `cross_site_reason` flags is
    answered 403 with `refuse(reason, own_origin)` and never reaches the app.

    Plain ASGI rather than a BaseHTTPMiddleware, so streamed responses and disconnect detection pass untouched.
    """

    def __init__(self, app: ASGIApp, refuse: Callable[[str, str], Response],
                 methods: Collection[str] | None = None) -> None:
        self.app = app
        self.refuse = refuse
        self.methods = None if methods is None else frozenset(m.upper() for m in methods)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (self.methods is None or scope["method"] in self.methods):
            headers = Headers(scope=scope)
            reason = cross_site_reason(headers, scope["scheme"])
            if reason is not None:
                response = self.refuse(reason, f"{scope['scheme']}://{headers.get('host', '')}")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
