"""One model, one generation at a time: a bounded queue of jobs served by a single worker thread.

The server's request handlers only enqueue jobs and read their events, so a slow model never blocks the event
loop, and a full queue is refused at once (503) instead of piling up memory. A job whose client left is
cancelled: the worker skips it if it was still waiting, or stops generating at the next token.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import StoppingCriteria

from lorakit.data.conversation import Message
from lorakit.inference.answer_text import AnswerText
from lorakit.inference.decode import Decoded
from lorakit.inference.generate import GenerationSettings, LoadedRun, stream_answer

__all__ = ["TextPiece", "JobFinished", "JobFailed", "GenerationJob", "GenerationQueue"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextPiece:
    text: str


@dataclass(frozen=True)
class JobFinished:
    """finish_reason: 'stop' (end-of-turn token or stop string), 'length' (max_tokens), 'cancelled' (client left)."""

    finish_reason: str
    completion_tokens: int
    answer: str


@dataclass(frozen=True)
class JobFailed:
    error: BaseException


JobEvent = TextPiece | JobFinished | JobFailed


@dataclass
class GenerationJob:
    """One request's generation; `emit` must be safe to call from the worker thread."""

    messages: tuple[Message, ...]
    settings: GenerationSettings
    stop: tuple[str, ...]
    seed: int | None
    emit: Callable[[JobEvent], None]
    cancel: threading.Event = field(default_factory=threading.Event)


class _StopWhenSet(StoppingCriteria):
    """Ends generation after the current token once `cancel` is set (client gone, stop string seen)."""

    def __init__(self, cancel: threading.Event):
        self.cancel = cancel

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.cancel.is_set(), dtype=torch.bool, device=input_ids.device)


class GenerationQueue:
    """At most `max_waiting` jobs wait behind the one generating; `submit` refuses more."""

    def __init__(self, run: LoadedRun, max_waiting: int):
        self.run = run
        self._waiting: queue.Queue[GenerationJob | None] = queue.Queue(maxsize=max_waiting)
        self._thread = threading.Thread(target=self._work, name="lorakit-generation", daemon=True)
        self._lock = threading.Lock()  # guards the fields below, which /health reads from the event loop
        self._current: GenerationJob | None = None
        self._seconds_per_job = 1.0  # running mean, for Retry-After
        self.finished = Counter()
        self.tokens_generated = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the job generating (after its current token) and the worker; waiting jobs are not run."""
        with self._lock:
            if self._current is not None:
                self._current.cancel.set()
        while True:
            try:
                job = self._waiting.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.cancel.set()
                job.emit(JobFinished("cancelled", 0, ""))
        self._waiting.put(None)
        self._thread.join(timeout_s)

    def submit(self, job: GenerationJob) -> bool:
        """Queue the job, or return False at once when the queue is full."""
        try:
            self._waiting.put_nowait(job)
        except queue.Full:
            return False
        return True

    def retry_after_s(self) -> int:
        """Seconds until a slot is likely free: the waiting jobs times the mean job duration."""
        return max(1, math.ceil((self._waiting.qsize() + 1) * self._seconds_per_job))

    def status(self) -> dict:
        with self._lock:
            return {"waiting": self._waiting.qsize(), "max_waiting": self._waiting.maxsize,
                    "generating": self._current is not None, "finished": dict(self.finished),
                    "tokens_generated": self.tokens_generated}

    def _work(self) -> None:
        while (job := self._waiting.get()) is not None:
            if job.cancel.is_set():
                self._record(job, JobFinished("cancelled", 0, ""))
                continue
            with self._lock:
                self._current = job
            started = time.perf_counter()
            try:
                outcome = self._generate(job)
            except Exception as exc:  # the request gets a 500; the worker keeps serving
                log.exception("generation failed")
                outcome = JobFailed(exc)
            self._seconds_per_job = 0.8 * self._seconds_per_job + 0.2 * (time.perf_counter() - started)
            with self._lock:
                self._current = None
            self._record(job, outcome)

    def _record(self, job: GenerationJob, outcome: JobFinished | JobFailed) -> None:
        with self._lock:
            if isinstance(outcome, JobFinished):
                self.finished[outcome.finish_reason] += 1
                self.tokens_generated += outcome.completion_tokens
            else:
                self.finished["error"] += 1
        _emit(job, outcome)

    def _generate(self, job: GenerationJob) -> JobFinished:
        if job.seed is not None:
            torch.manual_seed(job.seed)  # generation is serialized, so the global generator is ours
        text = AnswerText(job.stop)
        ended: list[Decoded] = []
        # Read the stream to its end even after a stop string, so that `on_end` reports the tokens generated.
        for piece in stream_answer(self.run, job.messages, job.settings, stopping_criteria=[_StopWhenSet(job.cancel)],
                                   on_end=ended.append):
            if (sent := text.feed(piece)) and not job.cancel.is_set():
                _emit(job, TextPiece(sent))
            if text.stopped:
                job.cancel.set()
        decoded = ended[0]
        if text.stopped:
            reason = "stop"
        else:
            if (rest := text.finish()) and not job.cancel.is_set():
                _emit(job, TextPiece(rest))
            reason = decoded.finish_reason  # 'stop' (end of turn), 'length' or 'cancelled' (client gone)
        return JobFinished(reason, len(decoded.token_ids), text.sent)


def _emit(job: GenerationJob, event: JobEvent) -> None:
    try:
        job.emit(event)
    except RuntimeError:  # the server's event loop closed (shutdown): nobody is listening any more
        job.cancel.set()
