"""A small HTTP server on 127.0.0.1 that plays the Hugging Face Hub for tests (point HF_ENDPOINT at `url`).

It answers the three calls `snapshot_download` makes (repo info, recursive tree, file resolve) the way the
real Hub does, including its error headers: a missing repo is 401/404 with `X-Error-Code: RepoNotFound`, a
bad token is 401 "Invalid credentials in Authorization header", a gated repo serves metadata but answers
file downloads with 401/403 `X-Error-Code: GatedRepo`. `hang=True` accepts connections and never answers.
Every request's Authorization header is recorded, so tests can check where a token was sent.

Uploads (`create_repo` + `upload_folder`, as huggingface_hub 2.x sends them): POST /api/repos/create,
POST /api/models/{repo}/preupload/{rev} (every file "regular", so no LFS/Xet transfer) and
POST /api/models/{repo}/commit/{rev} (NDJSON, files base64), after POST /api/validate-yaml. Uploaded repos land in `created`;
`add_created` makes one that exists already (create then answers 409 with the repo's `url`, as the Hub does, which
`create_repo(exist_ok=True)` reads), and GET /api/models/{repo} (`repo_info`) reports its `private` flag.
`forbidden_namespaces` answers create with 403; `drop_commit=True` closes the connection mid-commit.

Faults of one repo (`add(..., fault=...)`): an HTTP status (429, 500, 503, with `retry_after` as a Retry-After
header) for every request about it, or "cut": file downloads send their full Content-Length but only half the
bytes, then close the connection (a download cut mid-file, every time).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

__all__ = ["FakeRepo", "FakeHub"]

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class CreatedRepo:
    private: bool | None
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[str] = field(default_factory=list)


@dataclass
class FakeRepo:
    directory: Path
    gated: bool = False
    granted_tokens: set[str] = field(default_factory=set)
    fault: int | str | None = None  # an HTTP status for every request, or "cut": file bodies stop halfway
    retry_after: str | None = None  # the Retry-After header sent with a fault status


class FakeHub:
    """`with FakeHub(valid_tokens={...}) as hub: hub.add("org/name", folder)`; `hub.url` is the endpoint."""

    def __init__(self, valid_tokens: set[str] | None = None, hang: bool = False,
                 forbidden_namespaces: set[str] | None = None, drop_commit: bool = False):
        self.repos: dict[str, FakeRepo] = {}
        self.created: dict[str, CreatedRepo] = {}
        self.forbidden_namespaces = set(forbidden_namespaces or ())
        self.drop_commit = drop_commit
        self.valid_tokens = set(valid_tokens or ())
        self.hang = hang
        self._stopped = threading.Event()
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, authorization)
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                hub._handle(self, head=True)

            def do_GET(self) -> None:
                hub._handle(self, head=False)

            def do_POST(self) -> None:
                hub._handle_post(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def add(self, repo_id: str, directory: Path, *, gated: bool = False, granted_tokens: set[str] | None = None,
            fault: int | str | None = None, retry_after: str | None = None) -> None:
        self.repos[repo_id] = FakeRepo(Path(directory), gated, set(granted_tokens or ()), fault, retry_after)

    def add_created(self, repo_id: str, *, private: bool) -> None:
        """A repo that exists on the fake Hub before the test uploads to it."""
        self.created[repo_id] = CreatedRepo(private=private)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stopped.set()
        self.server.shutdown()
        self.server.server_close()

    # --- request handling -------------------------------------------------------------------------------

    def _handle(self, request: BaseHTTPRequestHandler, head: bool) -> None:
        authorization = request.headers.get("Authorization")
        path = unquote(urlparse(request.path).path)
        self.requests.append((request.command, path, authorization))
        if self.hang:
            self._stopped.wait(30)
            return
        token = authorization.removeprefix("Bearer ").strip() if authorization else None
        if token is not None and token not in self.valid_tokens:
            return self._error(request, 401, None, "Invalid credentials in Authorization header", head)
        if path.startswith("/api/models/"):
            return self._api(request, path.removeprefix("/api/models/"), token, head)
        if "/resolve/" in path:
            repo_id, _, rest = path.lstrip("/").partition("/resolve/")
            _revision, _, filename = rest.partition("/")
            return self._file(request, repo_id, filename, token, head)
        return self._error(request, 404, None, "Not Found", head)

    def _handle_post(self, request: BaseHTTPRequestHandler) -> None:
        authorization = request.headers.get("Authorization")
        path = unquote(urlparse(request.path).path)
        self.requests.append((request.command, path, authorization))
        token = authorization.removeprefix("Bearer ").strip() if authorization else None
        if "/commit/" in path and self.drop_commit:
            request.rfile.read(min(int(request.headers.get("Content-Length") or 0), 64))
            request.close_connection = True
            request.connection.shutdown(2)  # the network fails mid-upload: no answer at all
            return
        body = request.rfile.read(int(request.headers.get("Content-Length") or 0))
        if token is None or token not in self.valid_tokens:
            return self._error(request, 401, None, "Invalid credentials in Authorization header", False)
        if path == "/api/validate-yaml":  # the README's YAML header, checked before a commit
            return self._json(request, {"errors": [], "warnings": []}, False)
        if path == "/api/repos/create":
            payload = json.loads(body)
            repo_id = "/".join(p for p in (payload.get("organization"), payload["name"]) if p)
            if repo_id.split("/")[0] in self.forbidden_namespaces:
                return self._error(request, 403, None, "You don't have the rights to create a model under the "
                                   "namespace", False)
            if repo_id in self.created:
                return self._error(request, 409, None, "You already created this model repo", False,
                                   url=f"{self.url}/{repo_id}")
            self.created[repo_id] = CreatedRepo(private=payload.get("visibility", "public") == "private"
                                                if "visibility" in payload else payload.get("private"))
            return self._json(request, {"url": f"{self.url}/{repo_id}"}, False)
        rest = path.removeprefix("/api/models/")
        for endpoint in ("/preupload/", "/commit/"):
            if endpoint in rest:
                repo_id = rest.split(endpoint)[0]
                if repo_id not in self.created:
                    return self._error(request, 404, "RepoNotFound", "Repository not found", False)
                if endpoint == "/preupload/":
                    files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                             for f in json.loads(body)["files"]]
                    return self._json(request, {"files": files}, False)
                return self._commit(request, repo_id, body)
        return self._error(request, 404, None, "Not Found", False)

    def _commit(self, request, repo_id: str, body: bytes) -> None:
        repo = self.created[repo_id]
        for line in body.splitlines():
            item = json.loads(line)
            if item["key"] == "header":
                repo.commits.append(item["value"]["summary"])
            elif item["key"] == "file":
                repo.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
        oid = hashlib.sha1(body).hexdigest()
        self._json(request, {"commitUrl": f"{self.url}/{repo_id}/commit/{oid}", "commitOid": oid,
                             "pullRequestUrl": None}, False)

    def _repo_or_error(self, request, repo_id: str, token: str | None, head: bool) -> FakeRepo | None:
        repo = self.repos.get(repo_id)
        if repo is None:
            # Like the Hub: anonymous callers get 401 for a missing repo (it might be private), others 404.
            self._error(request, 401 if token is None else 404, "RepoNotFound", "Repository not found", head)
        elif isinstance(repo.fault, int):
            body = json.dumps({"error": HTTPStatus(repo.fault).phrase}).encode()
            headers = {"Content-Type": "application/json", **({"Retry-After": repo.retry_after} if repo.retry_after else {})}
            self._send(request, repo.fault, body, headers, head)
            return None
        return repo

    def _api(self, request, rest: str, token: str | None, head: bool) -> None:
        if "/revision/" in rest:
            repo_id, _, revision = rest.partition("/revision/")
            repo = self._repo_or_error(request, repo_id, token, head)
            if repo is not None and revision not in ("main", COMMIT):  # a branch or tag that no longer exists
                self._error(request, 404, "RevisionNotFound", f"Invalid rev id: {revision}", head)
            elif repo is not None:
                files = [{"rfilename": p.name} for p in sorted(repo.directory.iterdir()) if p.is_file()]
                self._json(request, {"id": repo_id, "sha": COMMIT, "siblings": files, "gated": repo.gated}, head)
        elif "/tree/" in rest:
            repo_id = rest.split("/tree/")[0]
            repo = self._repo_or_error(request, repo_id, token, head)
            if repo is not None:
                self._json(request, [self._tree_entry(p) for p in sorted(repo.directory.iterdir()) if p.is_file()], head)
        elif rest in self.created:  # repo_info of an uploaded repo
            self._json(request, {"id": rest, "private": bool(self.created[rest].private), "sha": COMMIT}, head)
        else:
            self._error(request, 404, None, "Not Found", head)

    @staticmethod
    def _tree_entry(path: Path) -> dict:
        data = path.read_bytes()
        return {"type": "file", "path": path.name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}

    def _file(self, request, repo_id: str, filename: str, token: str | None, head: bool) -> None:
        repo = self._repo_or_error(request, repo_id, token, head)
        if repo is None:
            return
        if repo.gated and token not in repo.granted_tokens:
            message = f"Access to model {repo_id} is restricted and you are not in the authorized list."
            return self._error(request, 401 if token is None else 403, "GatedRepo", message, head)
        file = repo.directory / filename
        if not file.is_file():
            return self._error(request, 404, "EntryNotFound", "Entry not found", head)
        data = file.read_bytes()
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha1(data).hexdigest()}"',
                   "Content-Type": "application/octet-stream"}
        if repo.fault == "cut" and not head:
            request.send_response(200)
            for key, value in {**headers, "Content-Length": str(len(data))}.items():
                request.send_header(key, value)
            request.end_headers()
            request.wfile.write(data[: len(data) // 2])
            request.wfile.flush()
            request.close_connection = True
            request.connection.shutdown(2)
            return
        self._send(request, 200, data, headers, head)

    # --- responses ----------------------------------------------------------------------------------------

    def _json(self, request, payload, head: bool) -> None:
        self._send(request, 200, json.dumps(payload).encode(), {"Content-Type": "application/json"}, head)

    def _error(self, request, status: int, code: str | None, message: str, head: bool, **extra: str) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._send(request, status, json.dumps({"error": message, **extra}).encode(), headers, head)

    @staticmethod
    def _send(request, status: int, body: bytes, headers: dict[str, str], head: bool) -> None:
        request.send_response(status)
        for key, value in headers.items():
            request.send_header(key, value)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        if not head:
            request.wfile.write(body)
