"""The studio's FastAPI app: the static page (static/) and the JSON API over the library (routes_*.py).

A LorakitError becomes `{"error": message, "hint": hint}` with status 400 (422 for a refused `--set` line):
the same two lines the CLI prints.
Other web pages in the browser are kept out (runtime/local_http.py): on loopback the Host must name this
machine, and a POST/PUT/PATCH/DELETE sent by another site (its Origin, or Sec-Fetch-Site) is refused with 403.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from lorakit.errors import LorakitError
from lorakit.runtime.local_http import LOOPBACK_HOSTS, SameOriginGuard
from lorakit.runtime.logging import get_logger
from lorakit.studio import routes_chat, routes_data, routes_review, routes_runs
from lorakit.studio.chat_models import ChatModels
from lorakit.studio.run_config import RefusedOverride
from lorakit.studio.workspace import Workspace

__all__ = ["STATIC_DIR", "create_app"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
# Requests that change data, runs or jobs; GET must stay open to cross-site links that open the page.
STATE_CHANGING_METHODS = ("POST", "PUT", "PATCH", "DELETE")
log = get_logger("studio.app")


def create_app(workdir: str | Path, allowed_hosts: tuple[str, ...] | None = LOOPBACK_HOSTS) -> FastAPI:
    """The studio over `workdir` (created with data/ and runs/ if missing); `allowed_hosts` None allows any
    Host header (for `--host` other than loopback)."""
    workspace = Workspace(Path(workdir).expanduser().resolve()).create()
    chat_models = ChatModels()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(chat_models.close)

    app = FastAPI(title="lorakit studio", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.workspace = workspace
    app.state.chat_models = chat_models
    app.add_middleware(SameOriginGuard, refuse=_refuse_cross_site, methods=STATE_CHANGING_METHODS)
    if allowed_hosts is not None:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    _add_error_handlers(app)
    for module in (routes_data, routes_runs, routes_review, routes_chat):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/api/workspace")
    def workspace_info() -> dict:
        return {"workdir": str(workspace.root), "data": str(workspace.data_dir), "runs": str(workspace.runs_dir)}

    return app


def _refuse_cross_site(reason: str, own_origin: str) -> JSONResponse:
    return JSONResponse({"error": f"Cross-site request refused: {reason}.",
                         "hint": f"Use the studio page itself, {own_origin}/; other web sites may not change your "
                         "data, runs or jobs.", "kind": "CrossSiteRequest"}, status_code=403)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(LorakitError)
    async def lorakit_error(request: Request, exc: LorakitError) -> JSONResponse:
        status = 422 if isinstance(exc, RefusedOverride) else 400
        return JSONResponse({"error": exc.message, "hint": exc.hint, "kind": type(exc).__name__}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": f"Invalid request: {problems}", "hint": None, "kind": "RequestError"},
                            status_code=422)
