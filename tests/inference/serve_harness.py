"""Run `lorakit serve`'s app under uvicorn in a thread on a free loopback port, and talk to it raw.

A plain module (not a conftest.py), imported as `inference.serve_harness`.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time


class ServerThread:
    """uvicorn on 127.0.0.1:<free port>; `with ServerThread(app) as server:` starts and stops it (bounded)."""

    def __init__(self, app, start_timeout_s: float = 30.0):
        import uvicorn

        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        # A long keep-alive: a client that reuses its connection just as uvicorn's default 5 s idle timeout closes
        # it gets "Connection reset by peer" (the 16-client bursts reuse theirs after a few seconds' pause).
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2,
                                                    timeout_keep_alive=120))
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._socket]}, daemon=True)
        self._start_timeout_s = start_timeout_s

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + self._start_timeout_s
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start in time"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self._thread.join(15)
        self._socket.close()
        assert not self._thread.is_alive(), "uvicorn did not stop in time"

    def request(self, method: str, path: str, body: bytes | dict | None = None, headers: dict | None = None, *,
                content_type: str | None = "application/json", text: bool = False) -> tuple[int, dict, dict | str]:
        """(status, headers, body) of one raw HTTP request: the body parsed as JSON, or its text with `text=True`.

        The request carries `Content-Type: content_type` (none when None) and `headers`, which win over it;
        http.client adds Host unless `headers` has one.
        """
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        payload = json.dumps(body).encode() if isinstance(body, dict) else body
        sent = {} if content_type is None else {"Content-Type": content_type}
        connection.request(method, path, body=payload, headers={**sent, **(headers or {})})
        response = connection.getresponse()
        data = response.read()
        connection.close()
        return response.status, dict(response.getheaders()), data.decode() if text else json.loads(data)

    def health(self) -> dict:
        return self.request("GET", "/health")[2]

    def wait_idle(self, timeout_s: float = 60.0) -> dict:
        """The /health body once nothing waits or generates."""
        deadline = time.monotonic() + timeout_s
        while True:
            health = self.health()
            if not health["generating"] and health["waiting"] == 0:
                return health
            assert time.monotonic() < deadline, f"server still busy after {timeout_s} s: {health}"
            time.sleep(0.05)


def open_stream(port: int, body: dict) -> socket.socket:
    """A raw socket that sent a streaming chat request (so the test can drop it mid-stream)."""
    payload = json.dumps({**body, "stream": True}).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    return sock


def read_until(sock: socket.socket, marker: bytes, timeout_s: float = 30.0) -> bytes:
    """Bytes received until `marker` appears (bounded in time)."""
    received = b""
    deadline = time.monotonic() + timeout_s
    while marker not in received:
        assert time.monotonic() < deadline, f"{marker!r} not received in {timeout_s} s: {received[-300:]!r}"
        chunk = sock.recv(4096)
        assert chunk, f"connection closed before {marker!r}: {received[-300:]!r}"
        received += chunk
    return received
