"""The OpenAI chat-completions wire format: parse and check a request, build responses, chunks and errors.

Pure functions over JSON-ready dicts (no model, no server), so every message a client can get is testable
here. Errors use OpenAI's shape: {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lorakit.data.conversation import CHAT_ROLES, Message
from lorakit.data.unicode_text import find_lone_surrogate

__all__ = ["ApiError", "ChatRequest", "parse_chat_request", "error_body", "context_error", "new_completion_id",
           "completion_body", "chunk_body", "usage_body", "sse", "SSE_DONE", "StreamChunks"]

MAX_STOP_STRINGS = 4  # OpenAI's limit


@dataclass
class ApiError(Exception):
    """An HTTP error answered in OpenAI's error shape."""

    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)


def error_body(error: ApiError) -> dict:
    return {"error": {"message": error.message, "type": error.type, "param": error.param, "code": error.code}}


class _StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _RequestFields(BaseModel):
    """The fields lorakit honours; others an OpenAI client may send (user, metadata, ...) are ignored."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    messages: list = Field(min_length=1)
    stream: bool = False
    stream_options: _StreamOptions | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)  # OpenAI's int64; torch takes any of them
    n: int = Field(1, ge=1, le=1)


@dataclass(frozen=True)
class ChatRequest:
    """A checked request: the conversation ends with a user turn; None = use the run's setting."""

    messages: tuple[Message, ...]
    stream: bool
    include_usage: bool
    temperature: float | None
    top_p: float | None
    max_tokens: int | None
    stop: tuple[str, ...]
    seed: int | None


def parse_chat_request(body: bytes) -> ChatRequest:
    """The request, or ApiError(400) naming the first problem (JSON position, or field path and rule)."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f" (line {exc.lineno}, column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else ""
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
        raise ApiError(400, f"The request body is not valid JSON: {reason}{where}.") from None
    if not isinstance(data, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    surrogate = find_lone_surrogate(data)  # "\ud800" parses, but no tokenizer or UTF-8 writer takes it
    if surrogate is not None:
        raise ApiError(400, f"{surrogate[0]}: {surrogate[1]}.", param=surrogate[0])
    try:
        fields = _RequestFields.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = _field_path(first["loc"])
        if where == "messages" and first["type"] == "too_short":
            raise ApiError(400, "messages: must hold at least one message.", param="messages") from None
        raise ApiError(400, f"{where}: {first['msg']}.", param=where) from None
    stop = (fields.stop,) if isinstance(fields.stop, str) else tuple(fields.stop or ())
    if len(stop) > MAX_STOP_STRINGS:
        raise ApiError(400, f"stop: at most {MAX_STOP_STRINGS} stop strings, got {len(stop)}.", param="stop")
    return ChatRequest(
        messages=_parse_messages(fields.messages),
        stream=fields.stream,
        include_usage=bool(fields.stream_options and fields.stream_options.include_usage),
        temperature=fields.temperature,
        top_p=fields.top_p,
        max_tokens=fields.max_completion_tokens or fields.max_tokens,
        stop=stop,
        seed=fields.seed,
    )


def _field_path(loc: tuple) -> str:
    """('messages', 0, 'role') -> 'messages[0].role'."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path


def _parse_messages(raw: list) -> tuple[Message, ...]:
    messages = []
    for index, item in enumerate(raw):
        where = f"messages[{index}]"
        if not isinstance(item, dict):
            raise ApiError(400, f"{where}: must be an object with 'role' and 'content'.", param=where)
        role = "system" if item.get("role") == "developer" else item.get("role")
        if role not in CHAT_ROLES:
            raise ApiError(400, f"{where}.role: unknown role {json.dumps(item.get('role'))}; expected one of "
                           f"{', '.join(CHAT_ROLES)}.", param=f"{where}.role")
        if role == "system" and index > 0:
            raise ApiError(400, f"{where}.role: a system message may only come first.", param=f"{where}.role")
        content = _text_content(item.get("content"), f"{where}.content")
        if not content.strip():
            raise ApiError(400, f"{where}.content: is empty.", param=f"{where}.content")
        messages.append(Message(role, content))
    if messages[-1].role != "user":
        raise ApiError(400, f"messages[{len(messages) - 1}].role: the last message must come from the user, "
                       f"not '{messages[-1].role}'.", param="messages")
    return tuple(messages)


def _text_content(content: object, where: str) -> str:
    """A string, or OpenAI's list of content parts when every part is text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise ApiError(400, f"{where}: must be a string or a list of text parts.", param=where)


def context_error(context_tokens: int, prompt_tokens: int, max_tokens: int | None) -> ApiError:
    """400 in OpenAI's (and vLLM's) words, with the token counts."""
    if max_tokens is None:
        message = (f"This model's maximum context length is {context_tokens} tokens. However, your messages "
                   f"resulted in {prompt_tokens} tokens. Please reduce the length of the messages.")
    else:
        message = (f"This model's maximum context length is {context_tokens} tokens. However, you requested "
                   f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in the "
                   "completion). Please reduce the length of the messages or completion.")
    return ApiError(400, message, param="messages", code="context_length_exceeded")


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def completion_body(completion_id: str, model: str, content: str, finish_reason: str, usage: dict) -> dict:
    return {
        "id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": finish_reason, "logprobs": None}],
        "usage": usage,
    }


def chunk_body(completion_id: str, model: str, delta: dict, finish_reason: str | None = None,
               usage: dict | None = None, created: int | None = None) -> dict:
    """One streamed chunk; a usage-only chunk (stream_options.include_usage) has no choices."""
    choices = [] if usage is not None else [{"index": 0, "delta": delta, "finish_reason": finish_reason,
                                              "logprobs": None}]
    body = {"id": completion_id, "object": "chat.completion.chunk",
            "created": int(time.time()) if created is None else created, "model": model, "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return body


def usage_body(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def sse(data: dict | str) -> str:
    """One server-sent event; OpenAI streams end with the literal `data: [DONE]`."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


SSE_DONE = sse("[DONE]")
_DELTA_MARK = "\x00delta\x00"  # no model id (a folder name) or completion id holds a NUL


class StreamChunks:
    """The server-sent events of one streamed completion, each byte for byte `sse(chunk_body(...))`.

    Why: a content chunk is sent for every token of every streaming client, from the event loop that shares
    the GIL with the generation thread (issue 23), so only its text is serialized per token (0.3 us, against
    4.5 for the whole dict; small next to uvicorn's send, but free); the rest of the chunk is cut once from a
    serialized template. Every chunk of a completion carries the same `created`, as OpenAI's do ("Each chunk
    has the same timestamp").

    >>> chunks = StreamChunks("chatcmpl-1", "run", created=7)
    >>> chunks.content('Say "hi"') == sse(chunk_body("chatcmpl-1", "run", {"content": 'Say "hi"'}, created=7))
    True
    """

    def __init__(self, completion_id: str, model: str, created: int | None = None):
        self.id, self.model = completion_id, model
        self.created = int(time.time()) if created is None else created
        template = self._chunk({"content": _DELTA_MARK})
        self._before, self._after = template.split(json.dumps(_DELTA_MARK))  # exactly two parts: asserted by unpacking

    def _chunk(self, delta: dict, finish_reason: str | None = None, usage: dict | None = None) -> str:
        return sse(chunk_body(self.id, self.model, delta, finish_reason, usage, created=self.created))

    def role(self) -> str:
        """The first chunk: the assistant's role, no text yet."""
        return self._chunk({"role": "assistant", "content": ""})

    def content(self, text: str) -> str:
        return f"{self._before}{json.dumps(text)}{self._after}"

    def finish(self, finish_reason: str) -> str:
        return self._chunk({}, finish_reason=finish_reason)

    def usage(self, usage: dict) -> str:
        """stream_options.include_usage's last chunk: no choices."""
        return self._chunk({}, usage=usage)
