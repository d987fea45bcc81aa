"""One model, many answers at once: a bounded queue of jobs served by one worker thread that batches them.

The server's request handlers only enqueue jobs and read their events, so a slow model never blocks the event
loop, and a full queue is refused at once (503) instead of piling up memory. The worker decodes up to
`batch_size` jobs together (continuous batching, inference/running_batch.py): a job joins the running batch
between two decoding steps and leaves at its own end-of-turn, stop string or max_tokens, and its text streams
as its own tokens arrive; a step's events reach the server's event loop in one wake-up (inference/job_events.py).
A job whose client left is cancelled: skipped if it was still waiting, otherwise
dropped from the batch at the next step.
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
from transformers import TextStreamer

from lorakit.data.conversation import Message
from lorakit.data.render import render_prompt_ids
from lorakit.inference.answer_text import AnswerText
from lorakit.inference.generate import GenerationSettings, LoadedRun, _pad_id, stop_token_ids
from lorakit.inference.job_events import Outbox
from lorakit.inference.running_batch import NewToken, RowRequest, RunningBatch, batching_blocker

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
    """The job's generation raised `error`; `batch` jobs were generating together (all failed with it)."""

    error: BaseException
    batch: int = 1

    @property
    def out_of_memory(self) -> bool:
        """Out of GPU memory: the request's fault no more than the server's, and worth a retry once the batch is
        smaller (503), unlike a bug (500)."""
        return isinstance(self.error, torch.OutOfMemoryError)


JobEvent = TextPiece | JobFinished | JobFailed


@dataclass
class GenerationJob:
    """One request's generation; `emit` must be safe to call from the worker thread (a job_events.LoopInbox
    shares one event-loop wake-up per step with the other jobs on its loop)."""

    messages: tuple[Message, ...]
    settings: GenerationSettings
    stop: tuple[str, ...]
    seed: int | None
    emit: Callable[[JobEvent], None]
    cancel: threading.Event = field(default_factory=threading.Event)


class _PieceStreamer(TextStreamer):
    """transformers' TextStreamer (what `lorakit chat` streams with), collecting the pieces instead of printing."""

    def __init__(self, tokenizer):
        super().__init__(tokenizer, skip_prompt=False, skip_special_tokens=True)
        self.pieces: list[str] = []

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.pieces.append(text)


class _Live:
    """A job in the running batch: its text so far, cut at its stop strings."""

    def __init__(self, job: GenerationJob, tokenizer, send: Callable[[GenerationJob, JobEvent], None]):
        self.job, self._send = job, send
        self.text = AnswerText(job.stop)
        self.streamer = _PieceStreamer(tokenizer)
        self.tokens = 0
        self.started = time.perf_counter()

    def take(self, token: int, ended: bool) -> None:
        """Stream the text this token completes (nothing once the client has left)."""
        self.tokens += 1
        self.streamer.put(torch.tensor([token]))
        if ended:
            self.streamer.end()
        pieces, self.streamer.pieces = self.streamer.pieces, []
        for piece in pieces:
            if (sent := self.text.feed(piece)) and not self.job.cancel.is_set():
                self._send(self.job, TextPiece(sent))

    def finished(self, reason: str) -> JobFinished:
        if (rest := self.text.finish()) and not self.job.cancel.is_set():
            self._send(self.job, TextPiece(rest))
        return JobFinished("stop" if self.text.stopped else reason, self.tokens, self.text.sent)


class GenerationQueue:
    """Up to `batch_size` jobs generate together and at most `max_waiting` wait behind them; `submit` refuses more.

    batch_size 1 answers one request at a time (the studio's single user)."""

    def __init__(self, run: LoadedRun, max_waiting: int, batch_size: int = 1):
        self.run = run
        if batch_size > 1 and (blocker := batching_blocker(run.model)):
            log.warning("Answering one request at a time: %s, which batching cannot pad.", blocker)
            batch_size = 1
        self.batch_size = batch_size
        self._waiting: queue.Queue[GenerationJob | None] = queue.Queue(maxsize=max_waiting)
        self._thread = threading.Thread(target=self._work, name="lorakit-generation", daemon=True)
        self._lock = threading.Lock()  # guards the fields below, which /health reads from the event loop
        self._live: dict[int, _Live] = {}  # by id(job): the batch's row keys
        self._seconds_per_job = 1.0  # running mean, for Retry-After
        self.finished = Counter()
        self.tokens_generated = 0
        self._outbox = Outbox()  # the worker's events of this step, delivered together

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the jobs generating (at the next step) and the worker; waiting jobs are not run."""
        with self._lock:
            for live in self._live.values():
                live.job.cancel.set()
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
        """Seconds until a slot is likely free: the jobs ahead, `batch_size` at a time, at the mean job duration."""
        return max(1, math.ceil((self._waiting.qsize() + 1) * self._seconds_per_job / self.batch_size))

    def status(self) -> dict:
        with self._lock:
            return {"waiting": self._waiting.qsize(), "max_waiting": self._waiting.maxsize,
                    "generating": bool(self._live), "batch": len(self._live), "batch_size": self.batch_size,
                    "finished": dict(self.finished), "tokens_generated": self.tokens_generated}

    def _work(self) -> None:
        batch = RunningBatch(self.run.model, stop_ids=stop_token_ids(self.run), pad_id=_pad_id(self.run),
                             device=self.run.device)
        stopping = False
        while not (stopping and not batch):
            arrived, stopping = self._arrivals(block=not batch, stopping=stopping)
            try:
                if arrived:
                    self._take(batch, batch.join(arrived))
                    self._outbox.flush()  # first tokens at once: time to first token is not one step later
                if cancelled := [key for key in batch.keys if self._live[key].job.cancel.is_set()]:
                    batch.leave(cancelled)
                    for key in cancelled:
                        self._finish(key, "cancelled")
                if batch:
                    self._take(batch, batch.step())
            except Exception as exc:  # every job in the batch fails with it; the worker keeps serving
                failed = JobFailed(exc, batch=len(self._live))
                if failed.out_of_memory:  # the batch's cache is what filled the GPU: a warning, not a traceback
                    log.warning("Out of GPU memory while generating %d answer(s) together; they were answered 503 "
                                "and the batch was freed.", failed.batch)
                else:
                    log.exception("generation failed")
                for key in list(self._live):
                    self._finish(key, failed)
                batch = RunningBatch(batch.model, stop_ids=stop_token_ids(self.run), pad_id=_pad_id(self.run),
                                     device=self.run.device)
                if failed.out_of_memory and torch.cuda.is_available():
                    torch.cuda.empty_cache()  # the old batch's KV cache, released by the line above
            self._outbox.flush()

    def _arrivals(self, block: bool, stopping: bool) -> tuple[list[RowRequest], bool]:
        """Rows for the jobs that fit the batch now (waiting for one when it is empty); True once told to stop."""
        rows: list[RowRequest] = []
        while not stopping and len(self._live) < self.batch_size:
            if block and not rows:
                self._outbox.flush()  # nothing held back while the worker waits
            try:
                job = self._waiting.get(block=block and not rows)
            except queue.Empty:
                break
            if job is None:
                stopping = True
            elif job.cancel.is_set():
                self._record(job, JobFinished("cancelled", 0, ""))
            else:
                rows.append(self._admit(job))
        return [row for row in rows if row is not None], stopping

    def _admit(self, job: GenerationJob) -> RowRequest | None:
        try:
            prompt = render_prompt_ids(job.messages, self.run.tokenizer, self.run.system_prompt)
        except Exception as exc:  # this request gets a 500; the others go on
            log.exception("rendering the prompt failed")
            self._record(job, JobFailed(exc))
            return None
        generator = None
        if job.seed is not None and job.settings.temperature > 0:
            generator = torch.Generator(device=self.run.device).manual_seed(job.seed)
        with self._lock:
            self._live[id(job)] = _Live(job, self.run.tokenizer, self._send)
        return RowRequest(id(job), prompt, job.settings, generator)

    def _take(self, batch: RunningBatch, tokens: list[NewToken]) -> None:
        for new in tokens:
            live = self._live[new.key]
            live.take(new.token, ended=new.finish_reason is not None)
            if new.finish_reason is not None:
                self._finish(new.key, new.finish_reason)
            elif live.text.stopped:  # a stop string
                batch.leave([new.key])
                self._finish(new.key, "stop")

    def _finish(self, key: int, outcome: str | JobFailed) -> None:
        with self._lock:
            live = self._live.pop(key)
        self._seconds_per_job = 0.8 * self._seconds_per_job + 0.2 * (time.perf_counter() - live.started)
        self._record(live.job, outcome if isinstance(outcome, JobFailed) else live.finished(outcome))

    def _record(self, job: GenerationJob, outcome: JobFinished | JobFailed) -> None:
        with self._lock:
            if isinstance(outcome, JobFinished):
                self.finished[outcome.finish_reason] += 1
                self.tokens_generated += outcome.completion_tokens
            else:
                self.finished["error"] += 1
        self._send(job, outcome)

    def _send(self, job: GenerationJob, event: JobEvent) -> None:
        """Hold `event` for this step's flush; a closed event loop (shutdown) cancels the job."""
        self._outbox.add(job.emit, event, job.cancel.set)
