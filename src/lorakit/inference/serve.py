"""`lorakit serve`: an OpenAI-compatible HTTP server over a trained run (FastAPI + uvicorn, 127.0.0.1 by default).

Routes: POST /v1/chat/completions (plain or server-sent events), GET /v1/models, GET /health. Prompts are
rendered by data/render.py with the run's system prompt, exactly as `lorakit chat` does; one worker thread
decodes up to `batch_size` requests together, each joining the running batch at its next decoding step and
leaving at its own end (inference/generation_queue.py, running_batch.py), and a full queue answers 503 with
Retry-After, as Ollama does.
Other web pages in the user's browser are kept out (runtime/local_http.py): on a loopback address the Host
must name this machine (DNS rebinding), a browser's foreign Origin is refused (403), and a POST body must be
declared `application/json` (415), which an HTML form cannot do.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from lorakit.config import ServeConfig
from lorakit.data.render import render_prompt_ids
from lorakit.inference.generate import GenerationSettings, LoadedRun, load_run, with_disclaimer
from lorakit.inference.generation_queue import GenerationJob, GenerationQueue, JobFailed, JobFinished, TextPiece
from lorakit.inference.job_events import LoopInbox
from lorakit.inference.openai_api import (
    SSE_DONE,
    ApiError,
    ChatRequest,
    StreamChunks,
    completion_body,
    context_error,
    error_body,
    new_completion_id,
    parse_chat_request,
    sse,
    usage_body,
)
from lorakit.run.layout import FINAL
from lorakit.run.source import Permissions
from lorakit.runtime.local_http import SameOriginGuard, check_can_listen, is_loopback, trusted_hosts
from lorakit.runtime.logging import get_logger

__all__ = ["create_app", "serve_run", "served_model_id"]

log = get_logger(__name__)
_DISCONNECT_POLL_S = 0.5


def served_model_id(run: LoadedRun) -> str:
    """The run directory's name (the adapter folder's, when it was given directly)."""
    adapter_dir = run.adapter_dir
    assert adapter_dir is not None, "serve needs a run with its adapter"
    return adapter_dir.parent.name if adapter_dir.name == FINAL else adapter_dir.name


@dataclass
class _Server:
    run: LoadedRun
    options: ServeConfig
    queue: GenerationQueue
    model_id: str
    context_tokens: int
    defaults: GenerationSettings
    disclaimer: str
    created: int

    def check_api_key(self, request: Request) -> None:
        if self.options.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.options.api_key.encode()):
            raise ApiError(401, "Missing or incorrect API key: send the key the server was started with as "
                           "'Authorization: Bearer KEY'.", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})

    def plan(self, chat: ChatRequest) -> tuple[int, GenerationSettings]:
        """Prompt tokens and the settings for this request, or the context-length 400."""
        prompt_tokens = len(render_prompt_ids(chat.messages, self.run.tokenizer, self.run.system_prompt))
        room = self.context_tokens - prompt_tokens
        if chat.max_tokens is not None and chat.max_tokens > room:
            raise context_error(self.context_tokens, prompt_tokens, chat.max_tokens)
        if room < 1:
            raise context_error(self.context_tokens, prompt_tokens, None)
        settings = replace(
            self.defaults,
            max_new_tokens=chat.max_tokens or min(self.defaults.max_new_tokens, room),
            temperature=self.defaults.temperature if chat.temperature is None else chat.temperature,
            top_p=self.defaults.top_p if chat.top_p is None else chat.top_p,
        )
        return prompt_tokens, settings

    def content(self, answer: str) -> str:
        """The answer with the disclaimer appended (the disclaimer alone for an empty answer)."""
        if not self.disclaimer:
            return answer
        return with_disclaimer(answer, self.disclaimer) if answer else self.disclaimer

    def busy_error(self) -> ApiError:
        retry_s = self.queue.retry_after_s()
        return ApiError(503, f"The server is busy: {self.options.queue_size} requests are already waiting. "
                        f"Retry after {retry_s} s.", type="server_error", code="server_busy",
                        headers={"Retry-After": str(retry_s)})


def create_app(run: LoadedRun, options: ServeConfig) -> FastAPI:
    """The ASGI app for one loaded run; the generation worker starts and stops with the app's lifespan."""
    server = _Server(
        run=run, options=options, queue=GenerationQueue(run, options.queue_size, options.batch_size),
        model_id=served_model_id(run),
        # The model's own limit, as vLLM's max_model_len; model.max_length was the training length.
        context_tokens=int(run.model.config.max_position_embeddings),
        defaults=GenerationSettings.from_config(run.config),
        disclaimer=run.config.inference.disclaimer if options.disclaimer else "", created=int(time.time()),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        server.queue.start()
        yield
        await run_in_threadpool(server.queue.stop)

    app = FastAPI(title="lorakit", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    _add_error_handlers(app)
    _add_browser_guards(app, options.host)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": server.model_id, **server.queue.status()}

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        server.check_api_key(request)
        return {"object": "list", "data": [{"id": server.model_id, "object": "model", "created": server.created,
                                             "owned_by": "lorakit"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        server.check_api_key(request)
        _require_json(request)
        chat = parse_chat_request(await _read_body(request, options.max_body_bytes))
        prompt_tokens, settings = server.plan(chat)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        job = GenerationJob(chat.messages, settings, chat.stop, chat.seed, emit=LoopInbox(loop, events))
        if not server.queue.submit(job):
            raise server.busy_error()
        if chat.stream:
            return StreamingResponse(_stream(server, job, events, chat, prompt_tokens), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        return await _complete(server, job, events, request, prompt_tokens)

    return app


def _add_browser_guards(app: FastAPI, host: str) -> None:
    """Keep other web pages in the user's browser away from the model (runtime/local_http.py says how): on a
    loopback address the Host must name this machine, and anywhere a browser's foreign Origin is refused."""
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    def refuse(reason: str, own_origin: str) -> JSONResponse:
        error = ApiError(403, f"Cross-origin request refused: {reason}. Web pages on other sites may not use this "
                         "server.", code="cross_origin_request")
        return JSONResponse(error_body(error), status_code=403)

    app.add_middleware(SameOriginGuard, refuse=refuse)
    if (allowed := trusted_hosts(host)) is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed))


def _require_json(request: Request) -> None:
    """A JSON body must say so: an HTML form (or a fetch without CORS preflight) cannot send
    `application/json`, so this also keeps cross-site pages out where browsers send no Origin."""
    content_type = request.headers.get("content-type", "")
    if content_type.partition(";")[0].strip().lower() != "application/json":
        got = repr(content_type) if content_type else "none"
        raise ApiError(415, f"The request body must be JSON, sent with 'Content-Type: application/json' (got {got}).",
                       code="unsupported_media_type")


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = f"No route {request.method} {request.url.path}." if exc.status_code in (404, 405) else str(exc.detail)
        return JSONResponse(error_body(ApiError(exc.status_code, message)), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request failed")
        error = ApiError(500, f"Internal error: {type(exc).__name__}.", type="server_error")
        return JSONResponse(error_body(error), status_code=500)


def generation_error(failed: JobFailed, batch_size: int) -> ApiError:
    """A failed generation as an answer: out of GPU memory is a 503 with Retry-After (the batch was freed and the
    server goes on, so a retry may well pass) naming what to lower; anything else is a bug, 500."""
    if not failed.out_of_memory:
        return ApiError(500, f"Generation failed: {type(failed.error).__name__}: {failed.error}", type="server_error")
    return ApiError(503, f"Out of GPU memory while generating {failed.batch} answer(s) together; the batch was freed "
                    "and the server goes on. Retry, or ask for a lower max_tokens; if it happens often, restart "
                    f"`lorakit serve` with a lower --batch-size (now {batch_size}).",
                    type="server_error", code="out_of_memory", headers={"Retry-After": "1"})


async def _read_body(request: Request, limit_bytes: int) -> bytes:
    """The body, refused (413) as soon as it passes the limit: an absurd upload is never held in memory."""
    too_large = ApiError(413, f"The request body is larger than this server's limit of {limit_bytes} bytes.",
                         code="request_too_large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit_bytes:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit_bytes:
            raise too_large
    return bytes(body)


async def _complete(server: _Server, job: GenerationJob, events: asyncio.Queue, request: Request,
                    prompt_tokens: int) -> Response:
    """Wait for the whole answer; a client that leaves meanwhile cancels its job."""
    while True:
        try:
            event = await asyncio.wait_for(events.get(), _DISCONNECT_POLL_S)
        except TimeoutError:
            if await request.is_disconnected():
                job.cancel.set()
                return Response(status_code=499)  # nobody reads it; nginx's "client closed request"
            continue
        if isinstance(event, JobFailed):
            raise generation_error(event, server.options.batch_size)
        if isinstance(event, JobFinished):
            body = completion_body(new_completion_id(), server.model_id, server.content(event.answer),
                                   event.finish_reason, usage_body(prompt_tokens, event.completion_tokens))
            return JSONResponse(body)


async def _stream(server: _Server, job: GenerationJob, events: asyncio.Queue, chat: ChatRequest,
                  prompt_tokens: int) -> AsyncIterator[str]:
    """Server-sent chunks as tokens arrive. Starlette cancels this generator when the client disconnects,
    and `finally` then drops its row from the batch at the next step, which frees its place for a waiting job.

    Every event waiting in the request's queue goes out in one body write (several SSE events, each its own
    `data:` line): why, bench/results/serve_batching/session12_host_cpu/README.md. While the event loop keeps up
    that is one write per decoding step; the last one carries the finish chunk, the usage chunk and [DONE]."""
    chunks = StreamChunks(new_completion_id(), server.model_id)
    try:
        yield chunks.role()
        ended = False
        while not ended:
            event = await events.get()
            body = []
            while True:
                text, ended = _event_sse(server, chunks, event, chat.include_usage, prompt_tokens)
                body.append(text)
                if ended or events.empty():
                    break
                event = events.get_nowait()
            yield "".join(body)
    finally:
        job.cancel.set()


def _event_sse(server: _Server, chunks: StreamChunks, event: TextPiece | JobFinished | JobFailed,
               include_usage: bool, prompt_tokens: int) -> tuple[str, bool]:
    """One job event as server-sent events, and whether the stream ends with it ([DONE] included then)."""
    if isinstance(event, TextPiece):
        return chunks.content(event.text), False
    if isinstance(event, JobFailed):
        return sse(error_body(generation_error(event, server.options.batch_size))) + SSE_DONE, True
    text = chunks.content(tail) if (tail := server.content(event.answer)[len(event.answer):]) else ""
    text += chunks.finish(event.finish_reason)
    if include_usage:
        text += chunks.usage(usage_body(prompt_tokens, event.completion_tokens))
    return text + SSE_DONE, True


def serve_run(run_dir: str | Path, options: ServeConfig, permissions: Permissions = Permissions()) -> None:
    """Load the run and serve it until interrupted (Ctrl-C); `permissions` as for load_run.

    A taken port or an unusable --host is a LorakitError before anything is printed or loaded (loading is slow)."""
    import uvicorn

    check_can_listen(options.host, options.port)
    if options.api_key is None and not is_loopback(options.host):
        log.warning("Serving on %s without --api-key: anyone who can reach this address can use the model.",
                    options.host)
    run = load_run(run_dir, permissions=permissions)
    app = create_app(run, options)
    log.info("Serving %s at http://%s:%d/v1 (OpenAI-compatible)", served_model_id(run), options.host, options.port)
    uvicorn.run(app, host=options.host, port=options.port, log_level="info", timeout_graceful_shutdown=5)
