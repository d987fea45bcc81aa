"""Chat for the page: the fine-tuned run and its base model, each loaded once and served by the same
generation queue as `lorakit serve` (inference/generation_queue.py), so answers stream the same way."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path

from lorakit.data.records import Message
from lorakit.inference.generate import GenerationSettings, LoadedRun, load_run, with_disclaimer
from lorakit.inference.generation_queue import GenerationJob, GenerationQueue, JobFailed, JobFinished, TextPiece
from lorakit.inference.job_events import LoopInbox

__all__ = ["CHAT_MODELS", "ChatModels", "sse_event", "stream_events"]

CHAT_MODELS = ("tuned", "base")
_QUEUE_SIZE = 4


def sse_event(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


class ChatModels:
    """Loaded models by (run folder, 'tuned' or 'base'); a model loads on its first question."""

    def __init__(self) -> None:
        self._loaded: dict[tuple[Path, str], tuple[LoadedRun, GenerationQueue]] = {}
        self._lock = threading.Lock()

    def get(self, run_dir: Path, which: str) -> tuple[LoadedRun, GenerationQueue]:
        assert which in CHAT_MODELS, which
        key = (run_dir.resolve(), which)
        with self._lock:
            if key not in self._loaded:
                run = load_run(run_dir, base_only=which == "base")
                queue = GenerationQueue(run, _QUEUE_SIZE)
                queue.start()
                self._loaded[key] = (run, queue)
            return self._loaded[key]

    def forget(self, run_dir: Path) -> None:
        """Drop a run's models (it was retrained: the adapter on disk changed)."""
        with self._lock:
            for key in [key for key in self._loaded if key[0] == run_dir.resolve()]:
                self._loaded.pop(key)[1].stop()

    def close(self) -> None:
        with self._lock:
            for _, queue in self._loaded.values():
                queue.stop()
            self._loaded.clear()

    def submit(self, run: LoadedRun, queue: GenerationQueue, messages: tuple[Message, ...],
               max_new_tokens: int | None) -> tuple[GenerationJob, asyncio.Queue]:
        """Queue one answer; its events arrive on the returned asyncio queue. None when the queue is full."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        settings = GenerationSettings.from_config(run.config)
        if max_new_tokens is not None:
            settings = GenerationSettings(max_new_tokens, settings.temperature, settings.top_p,
                                          settings.repetition_penalty, settings.repeat_last_n)
        job = GenerationJob(messages, settings, (), None,
                            emit=LoopInbox(loop, events))  # one event-loop wake-up per decoding step, as serve
        return (job, events) if queue.submit(job) else (None, events)


async def stream_events(run: LoadedRun, job: GenerationJob, events: asyncio.Queue) -> AsyncIterator[str]:
    """Server-sent events: {"text"} per piece, then {"done", "finish_reason", "disclaimer"} or {"error"}."""
    disclaimer = run.config.inference.disclaimer
    try:
        while True:
            event = await events.get()
            if isinstance(event, TextPiece):
                yield sse_event({"text": event.text})
            elif isinstance(event, JobFailed):
                yield sse_event({"error": f"Generation failed: {type(event.error).__name__}: {event.error}"})
                return
            elif isinstance(event, JobFinished):
                tail = with_disclaimer(event.answer, disclaimer)[len(event.answer.rstrip()):] if disclaimer else ""
                yield sse_event({"done": True, "finish_reason": event.finish_reason, "disclaimer": tail.strip(),
                                 "completion_tokens": event.completion_tokens})
                return
    finally:
        job.cancel.set()
