"""The exact server-sent event stream of `lorakit serve` for a fixed fake generation, and how its events are
grouped into body writes (inference/serve.py's _stream, openai_api.StreamChunks). No model, no server."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest
import torch

from lorakit.inference import serve
from lorakit.inference.generation_queue import JobFailed, JobFinished, TextPiece
from lorakit.inference.openai_api import ChatRequest, StreamChunks, chunk_body, sse

HEAD = 'data: {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 1700000000, "model": "run", '
ROLE = HEAD + ('"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null, '
               '"logprobs": null}]}\n\n')


def content(text_json: str) -> str:
    return HEAD + f'"choices": [{{"index": 0, "delta": {{"content": {text_json}}}, "finish_reason": null, ' \
                  '"logprobs": null}]}\n\n'


FINISH = HEAD + '"choices": [{"index": 0, "delta": {}, "finish_reason": "length", "logprobs": null}]}\n\n'
USAGE = HEAD + '"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}}\n\n'
DONE = "data: [DONE]\n\n"


@pytest.mark.parametrize("text", ["Rest", ' and "fluids"\n', "\\ back", "café ✓ 🩺", "\ud800", ""])
@pytest.mark.parametrize("model", ["run", 'odd "model" \\ ñ'])
def test_stream_chunks_are_byte_for_byte_the_chunk_bodies(text, model):
    chunks = StreamChunks("chatcmpl-x", model, created=5)
    assert chunks.content(text) == sse(chunk_body("chatcmpl-x", model, {"content": text}, created=5))
    assert chunks.role() == sse(chunk_body("chatcmpl-x", model, {"role": "assistant", "content": ""}, created=5))
    assert chunks.finish("stop") == sse(chunk_body("chatcmpl-x", model, {}, finish_reason="stop", created=5))
    usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    assert chunks.usage(usage) == sse(chunk_body("chatcmpl-x", model, {}, usage=usage, created=5))


def _fake_server(disclaimer: str = "") -> SimpleNamespace:
    return SimpleNamespace(model_id="run", options=SimpleNamespace(batch_size=8),
                           content=lambda answer: answer + disclaimer)


def _chat(include_usage: bool) -> ChatRequest:
    return ChatRequest(messages=(), stream=True, include_usage=include_usage, temperature=None, top_p=None,
                       max_tokens=None, stop=(), seed=None)


def _writes(monkeypatch, steps: list[list], include_usage: bool = True, disclaimer: str = "") -> list[str]:
    """The body writes of _stream when each inner list of events arrives in one step, the generator reading
    between steps (an event loop that keeps up); events of one step wait in the queue together."""
    monkeypatch.setattr(serve, "new_completion_id", lambda: "chatcmpl-test")
    monkeypatch.setattr("lorakit.inference.openai_api.time.time", lambda: 1700000000.7)
    job = SimpleNamespace(cancel=SimpleNamespace(set=lambda: None))

    async def drive() -> list[str]:
        events: asyncio.Queue = asyncio.Queue()
        stream = serve._stream(_fake_server(disclaimer), job, events, _chat(include_usage), 12)
        writes = [await anext(stream)]
        for step in steps:
            for event in step:
                events.put_nowait(event)
            writes.append(await anext(stream))
        with pytest.raises(StopAsyncIteration):
            await anext(stream)
        return writes

    return asyncio.run(drive())


def test_one_write_per_step_and_the_last_carries_finish_usage_and_done(monkeypatch):
    writes = _writes(monkeypatch, [[TextPiece("Rest")], [TextPiece(' and "fluids"\n')],
                                   [JobFinished("length", 3, 'Rest and "fluids"')]])
    assert writes == [ROLE, content('"Rest"'), content('" and \\"fluids\\"\\n"'), FINISH + USAGE + DONE]


def test_events_a_client_was_not_yet_sent_go_out_in_one_write_each_its_own_event(monkeypatch):
    """An event loop that fell behind the generation finds several steps' events queued: one write."""
    writes = _writes(monkeypatch, [[TextPiece("Rest"), TextPiece(" and"), JobFinished("length", 3, "Rest and")]],
                     include_usage=False)
    assert writes == [ROLE, content('"Rest"') + content('" and"') + FINISH + DONE]
    events = "".join(writes).split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    assert [json.loads(e.removeprefix("data: "))["choices"][0]["delta"] for e in events[:-2]] == [
        {"role": "assistant", "content": ""}, {"content": "Rest"}, {"content": " and"}, {}]


def test_disclaimer_tail_and_failure_events(monkeypatch):
    writes = _writes(monkeypatch, [[TextPiece("Rest")], [JobFinished("length", 3, "Rest")]],
                     include_usage=False, disclaimer="\n\nNot medical advice.")
    assert writes == [ROLE, content('"Rest"'), content('"\\n\\nNot medical advice."') + FINISH + DONE]
    failed = _writes(monkeypatch, [[TextPiece("Rest"), JobFailed(torch.OutOfMemoryError("CUDA"), batch=2)]])
    error = json.loads(failed[1].split("\n\n")[1].removeprefix("data: "))["error"]
    assert (error["code"], failed[1].endswith("\n\n" + DONE)) == ("out_of_memory", True)
    assert failed[1].startswith(content('"Rest"') + "data: {\"error\": ")
