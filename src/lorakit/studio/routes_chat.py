"""Step 5, chat: the fine-tuned model and its base side by side, streamed as server-sent events."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from lorakit.data.records import Message
from lorakit.errors import LorakitError
from lorakit.studio.chat_models import stream_events

__all__ = ["router"]

router = APIRouter(prefix="/api")


class ChatTurn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["user", "assistant"]
    content: str


class ChatBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: Literal["tuned", "base"] = "tuned"
    messages: list[ChatTurn] = Field(..., min_length=1)
    max_new_tokens: int | None = Field(None, ge=1, le=8192)


@router.post("/runs/{run}/chat")
async def chat(run: str, body: ChatBody, request: Request) -> StreamingResponse:
    """Like `lorakit chat RUN` (the run's system prompt and disclaimer); model 'base' switches the adapter off."""
    if body.messages[-1].role != "user" or not body.messages[-1].content.strip():
        raise LorakitError("The last message must be a question.")
    run_dir = request.app.state.workspace.run_dir(run)
    models = request.app.state.chat_models
    loaded, queue = await run_in_threadpool(models.get, run_dir, body.model)
    messages = tuple(Message(turn.role, turn.content) for turn in body.messages)
    job, events = models.submit(loaded, queue, messages, body.max_new_tokens)
    if job is None:
        raise LorakitError("The chat is busy answering other questions.", hint="Wait for an answer, then ask again.")
    return StreamingResponse(stream_events(loaded, job, events), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})
