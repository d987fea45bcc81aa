"""Download a model snapshot from the Hugging Face Hub, turning its failures into actionable messages.

The token comes from huggingface_hub itself (HF_TOKEN or `hf auth login`); lorakit never reads, prints or
stores it, and only asks whether one is configured to tell "not logged in" from "token rejected".
"""

from __future__ import annotations

import re
import urllib.parse
import urllib.request
from http import HTTPStatus
from pathlib import Path

from huggingface_hub import constants, get_session, get_token, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from lorakit.errors import HubAccessError

__all__ = ["download_model", "download_model_file", "download_tokenizer", "is_hub_id", "model_page_url"]

SAFE_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "tokenizer*", "*.model", "*.txt", "*.tiktoken"]
PICKLE_PATTERNS = ["*.bin", "*.pt", "*.pth"]
# A tokenizer without the weights (for `lorakit data`): its files plus config.json, which some tokenizers need.
TOKENIZER_PATTERNS = ["tokenizer*", "*.jinja", "chat_template.json", "special_tokens_map.json", "added_tokens.json",
                      "vocab*", "merges.txt", "*.model", "*.tiktoken", "config.json", "generation_config.json"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

_OFFLINE_HINT = ("Check your network connection, proxy and HF_ENDPOINT. If the model was downloaded before, set "
                 "HF_HUB_OFFLINE=1 to use the cached copy.")


def is_hub_id(name: str) -> bool:
    """`owner/name`, as the Hub spells a repository.

    >>> is_hub_id("HuggingFaceTB/SmolLM2-135M-Instruct"), is_hub_id("smollm2"), is_hub_id("./a/b")
    (True, False, False)
    """
    return bool(_HUB_ID.match(name))


def model_page_url(repo_id: str) -> str:
    return f"{constants.ENDPOINT.rstrip('/')}/{repo_id}"


def _bounded_timeout(request) -> None:
    """Request hook: a timeout for Hub API calls that set none. huggingface_hub sends repo-info and file-list
    requests without a timeout, so a Hub that accepts the connection and never answers would hang forever;
    downloads carry their own (HF_HUB_DOWNLOAD_TIMEOUT) and are left alone."""
    timeout = dict(request.extensions.get("timeout") or {})
    seconds = float(constants.HF_HUB_ETAG_TIMEOUT)
    request.extensions["timeout"] = {key: timeout.get(key) or seconds for key in ("connect", "read", "write", "pool")}


def _install_timeout_hook() -> None:
    hooks = get_session().event_hooks
    if _bounded_timeout not in hooks["request"]:
        hooks["request"].append(_bounded_timeout)


def download_model(repo_id: str, revision: str | None, *, allow_pickle: bool, trust_remote_code: bool) -> Path:
    """Fetch (or reuse from the HF cache) the files needed to load `repo_id`; safetensors only by default."""
    patterns = SAFE_PATTERNS + (PICKLE_PATTERNS if allow_pickle else []) + (["*.py"] if trust_remote_code else [])
    return _download_files(repo_id, revision, patterns)


def _download_files(repo_id: str, revision: str | None, patterns: list[str]) -> Path:
    """snapshot_download of the files matching `patterns`, with the timeout hook and one message per failure."""
    _install_timeout_hook()
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except (HfHubHTTPError, LocalEntryNotFoundError) as exc:
        raise _hub_error(exc, repo_id, revision) from None
    except OSError as exc:  # DNS failures and similar surface as plain OSError subclasses
        raise HubAccessError(
            f"Could not reach the Hugging Face Hub at {constants.ENDPOINT} to download {repo_id} ({type(exc).__name__}).",
            hint=_OFFLINE_HINT,
        ) from None
    except Exception as exc:
        if not _is_transport_error(exc):
            raise
        raise _broken_transfer(exc, repo_id) from None


def download_tokenizer(repo_id: str, revision: str | None) -> Path:
    """The tokenizer files of a Hub model, never its weights, with the same timeout and messages."""
    return _download_files(repo_id, revision, TOKENIZER_PATTERNS)


def download_model_file(repo_id: str, filename: str, revision: str | None) -> Path:
    """One file of a Hub model (e.g. config.json for `lorakit plan`), with the same timeout and messages.

    Through snapshot_download, like the weights: hf_hub_download retries a silent Hub with 60-second
    timeouts for minutes, while the snapshot's repo-info call fails within HF_HUB_ETAG_TIMEOUT."""
    path = _download_files(repo_id, revision, [filename]) / filename
    if not path.is_file():
        raise HubAccessError(f"{repo_id} has no {filename}; it is not a transformers model.",
                             hint=f"Check model.name against {model_page_url(repo_id)}.")
    return path


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)  # HfHubHTTPError carries the HTTP response, when there was one
    return response.status_code if response is not None else None


def _hub_error(exc: HfHubHTTPError | LocalEntryNotFoundError, repo_id: str, revision: str | None) -> HubAccessError:
    """One message per failure: what happened, and the one thing to do about it."""
    page = model_page_url(repo_id)
    status = _status(exc)
    logged_in = get_token() is not None
    if isinstance(exc, GatedRepoError):
        who = "your account has not been granted access" if logged_in else "you are not logged in"
        return HubAccessError(
            f"{repo_id} is a gated model and {who} ({status} {'Forbidden' if status == 403 else 'Unauthorized'}).",
            hint=f"Request access on the model page {page}, then log in with `hf auth login` (or set HF_TOKEN) "
            "and run the command again.",
        )
    if isinstance(exc, RevisionNotFoundError):
        return HubAccessError(f"{repo_id} has no revision '{revision}'.", hint=f"Check model.revision against {page}/tree/main.")
    if isinstance(exc, RepositoryNotFoundError) and status == 401 and not logged_in:
        return HubAccessError(
            f"The Hub refused to serve {repo_id} without a login (401 Unauthorized): it is private or gated, "
            "or it does not exist.",
            hint=f"Log in with `hf auth login` (or set HF_TOKEN). If it should be public, check the spelling of "
            f"model.name (it would open at {page}).",
        )
    if isinstance(exc, RepositoryNotFoundError):
        return HubAccessError(
            f"Model '{repo_id}' was not found on the Hub ({status} Not Found), or your account cannot see it.",
            hint=f"Check the spelling of model.name (owner/name, as it appears at {page}); for a private model, "
            "log in with `hf auth login` as an account that can see it.",
        )
    if isinstance(exc, HfHubHTTPError) and status == 401:
        return HubAccessError(
            f"The Hub rejected your token while downloading {repo_id} (401 Unauthorized: invalid credentials).",
            hint="The token is wrong, expired or revoked: run `hf auth login` again, or fix HF_TOKEN.",
        )
    if isinstance(exc, HfHubHTTPError):
        return _http_status_error(exc, status, repo_id)
    if isinstance(exc.__cause__, HfHubHTTPError) and _status(exc.__cause__) is not None:
        # snapshot_download turns a 429 or 5xx of its repo-info call into "no local copy" (LocalEntryNotFoundError)
        return _http_status_error(exc.__cause__, _status(exc.__cause__), repo_id)
    if constants.HF_HUB_OFFLINE:
        return HubAccessError(
            f"{repo_id} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 forbids downloading it.",
            hint="Unset HF_HUB_OFFLINE to download it, or point model.name at a local directory.",
        )
    return _connection_error(exc.__cause__, repo_id)


def _http_status_error(exc: HfHubHTTPError, status: int, repo_id: str) -> HubAccessError:
    """429 (rate limit) and 5xx (the Hub's trouble), with the status and the Retry-After the Hub sent."""
    retry_after = exc.response.headers.get("Retry-After")
    try:
        phrase = f" {HTTPStatus(status).phrase}"
    except ValueError:
        phrase = ""
    wait = f"; it asks to retry after {retry_after} s" if retry_after else ""
    if status == 429:
        return HubAccessError(
            f"The Hub is rate-limiting requests (HTTP 429 Too Many Requests) while downloading {repo_id}{wait}.",
            hint=(f"Wait {retry_after} s" if retry_after else "Wait a few minutes") + " and run the command again; "
            "logged-in requests (`hf auth login`) get higher limits.",
        )
    return HubAccessError(
        f"The Hub answered HTTP {status}{phrase} while downloading {repo_id}{wait}.",
        hint=("The Hub has a problem on its side: try again later (https://status.huggingface.co); files already "
              "downloaded stay in the cache." if status >= 500 else
              "Try again later; if it persists, check the status of the Hub and your network."),
    )


def _is_transport_error(exc: BaseException) -> bool:
    """An httpx transport failure (a connection dropped mid-file, a proxy error), told apart by class name so that
    the httpx fork huggingface_hub uses is not imported here."""
    return any(cls.__name__ == "TransportError" for cls in type(exc).__mro__)


def _broken_transfer(exc: BaseException, repo_id: str) -> HubAccessError:
    name = type(exc).__name__
    if name == "ProxyError":
        return HubAccessError(f"The proxy refused the connection to {constants.ENDPOINT} while downloading {repo_id} "
                              f"({exc}).", hint="Check HTTPS_PROXY / HTTP_PROXY and the proxy's credentials.")
    return HubAccessError(
        f"The connection to {constants.ENDPOINT} broke while downloading {repo_id} ({name}: {exc}); huggingface_hub "
        "retried it and gave up.",
        hint="Run the command again: files that finished stay in the Hugging Face cache, and the download resumes. "
        "If it keeps breaking, check your network or proxy.",
    )


def _connection_error(cause: BaseException | None, repo_id: str) -> HubAccessError:
    """No answer from the Hub: a TLS certificate that does not verify, a proxy that cannot be reached, or the Hub
    itself unreachable, each named as what it is (a refused proxy used to read as a refused Hub)."""
    text = str(cause)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        reason = text.split("certificate verify failed: ")[-1].split(" (_ssl")[0] if "verify failed" in text else text
        return HubAccessError(
            f"The TLS certificate of {constants.ENDPOINT} could not be verified ({reason}) while downloading "
            f"{repo_id}.",
            hint="A proxy or firewall that inspects HTTPS shows its own certificate: point SSL_CERT_FILE at its CA "
            "certificate (your IT department has it); otherwise check HF_ENDPOINT.")
    if (proxy := _proxy_for(constants.ENDPOINT)) is not None:
        return HubAccessError(
            f"Could not reach the proxy {proxy} ({type(cause).__name__}: {text}) on the way to {constants.ENDPOINT} "
            f"to download {repo_id}.",
            hint="Check HTTPS_PROXY / HTTP_PROXY (and NO_PROXY), or unset them on a network without a proxy. "
            "If the model was downloaded before, HF_HUB_OFFLINE=1 uses the cached copy.")
    return HubAccessError(f"{_unreachable(cause)} {constants.ENDPOINT} to download {repo_id}.", hint=_OFFLINE_HINT)


def _proxy_for(url: str) -> str | None:
    """The proxy the environment sets for `url` (as httpx reads it), without any user:password in it."""
    parts = urllib.parse.urlsplit(url)
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass_environment(parts.hostname or "", proxies):
        return None
    proxy_parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    return f"{proxy_parts.scheme}://{proxy_parts.hostname}" + (f":{proxy_parts.port}" if proxy_parts.port else "")


def _unreachable(cause: BaseException | None) -> str:
    """'Connection refused' or 'timed out', from the transport error huggingface_hub chained (httpx classes,
    told apart by name so that the httpx fork huggingface_hub uses is not imported here)."""
    name = type(cause).__name__ if cause is not None else ""
    if "Timeout" in name:
        return f"The Hugging Face Hub did not answer within {constants.HF_HUB_ETAG_TIMEOUT} s (timeout) at"
    if name == "ConnectError" and "refused" in str(cause).lower():
        return "The connection to the Hugging Face Hub was refused at"
    return f"Could not connect to the Hugging Face Hub ({name or 'network error'}) at"
