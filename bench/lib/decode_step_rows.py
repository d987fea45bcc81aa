"""The timed rows of bench/serve_step_profile.py: one decoding workload (N requests, each 1 + steps tokens, greedy)
through the running batch, a bare forward loop, the generation queue, and a stand-in model with no layers.
Each function returns ms per step, join ms and tokens/s (and the split of a step where it times one)."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

from serve_batching import QUESTIONS

SIZES = (1, 2, 4, 8)


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def prompts(run, count: int) -> list[list[int]]:
    from lorakit.data.conversation import Message
    from lorakit.data.render import render_prompt_ids

    return [render_prompt_ids((Message("user", QUESTIONS[i % len(QUESTIONS)]),), run.tokenizer, run.system_prompt)
            for i in range(count)]


def settings(run, steps: int, penalty: float | None = None):
    from dataclasses import replace

    from lorakit.inference.decode import GenerationSettings

    base = replace(GenerationSettings.from_config(run.config), temperature=0.0, max_new_tokens=steps + 1)
    return base if penalty is None else replace(base, repetition_penalty=penalty)


class Timed:
    """Wraps a callable: adds its synchronized wall time to `seconds`."""

    def __init__(self, function, device):
        self.function, self.device, self.seconds = function, device, 0.0

    def __call__(self, *args, **kwargs):
        started = time.perf_counter()
        result = self.function(*args, **kwargs)
        sync(self.device)
        self.seconds += time.perf_counter() - started
        return result


def loop_row(run, count: int, steps: int, penalty: float | None = None, parts: bool = True,
             per_row_penalty: bool = False) -> dict:
    """RunningBatch: join `count` prompts, `steps` steps. Wall times first, then (if `parts`) a second pass with
    the forward and _choose timed separately. `per_row_penalty`: greedy choice as before commit 3345fce
    (decode.py's penalize_repeats on each row's answer as a Python list: one host-to-device copy per row)."""
    from lorakit.inference.decode import penalize_repeats
    from lorakit.inference.generate import _pad_id
    from lorakit.inference.running_batch import RowRequest, RunningBatch

    chosen = settings(run, 10**6, penalty)  # rows live for every step: they never reach max_new_tokens
    rows = [RowRequest(i, p, chosen) for i, p in enumerate(prompts(run, count))]

    def once(split: bool, steps: int) -> dict:
        batch = RunningBatch(run.model, stop_ids=[], pad_id=_pad_id(run), device=run.device)
        forward = choose = None
        answers = {row.key: [] for row in rows}
        if per_row_penalty:
            def choose_per_row(logits, requests, penalize: bool):
                if penalize:
                    logits = penalize_repeats(logits, [answers[r.key] for r in requests], chosen.repetition_penalty,
                                              chosen.repeat_last_n)
                return logits.argmax(dim=-1)

            batch._choose = choose_per_row
        if split:
            batch.model = forward = Timed(run.model, run.device)
            if hasattr(batch, "_choose"):
                batch._choose = choose = Timed(batch._choose, run.device)
        sync(run.device)
        started = time.perf_counter()
        for new in batch.join(rows):
            answers[new.key].append(new.token)
        sync(run.device)
        joined = time.perf_counter()
        if forward is not None:
            forward.seconds = 0.0
            if choose is not None:
                choose.seconds = 0.0
        for _ in range(steps):
            for new in batch.step():
                answers[new.key].append(new.token)
        sync(run.device)
        ended = time.perf_counter()
        step_s = (ended - joined) / steps
        result = {"join_ms": 1000 * (joined - started), "step_ms": 1000 * step_s,
                  "tok_s": count * (steps + 1) / (ended - started)}
        if split:
            result["forward_ms"] = 1000 * forward.seconds / steps
            if choose is not None:
                result["choose_ms"] = 1000 * choose.seconds / steps
        return result

    once(False, 4)  # warm-up: first steps at each batch size pay one-off costs (kernels picked, allocator grows)
    result = once(False, steps)
    if parts:
        split = once(True, min(steps, 16))
        result.update({k: v for k, v in split.items() if k in ("forward_ms", "choose_ms")})
        result["rest_ms"] = result["step_ms"] - split["forward_ms"] - split.get("choose_ms", 0.0)
    return result


def bare_row(run, count: int, steps: int) -> dict:
    """The floor: prefill, then forward + mask column + argmax only (no penalty, no bookkeeping)."""
    import torch

    from lorakit.inference.generate import _pad_id

    def once(steps: int) -> dict:
        batch = prompts(run, count)
        width = max(map(len, batch))
        ids = torch.tensor([[_pad_id(run)] * (width - len(p)) + p for p in batch], device=run.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=run.device)
        sync(run.device)
        started = time.perf_counter()
        with torch.no_grad():
            out = run.model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                            cache=None, use_cache=True, logits_to_keep=1)
            cache, positions, token = out.cache, mask.sum(-1), out.logits[:, -1].argmax(-1)
            sync(run.device)
            joined = time.perf_counter()
            for _ in range(steps):
                mask = torch.cat([mask, mask.new_ones((count, 1))], dim=1)
                out = run.model(input_ids=token[:, None], attention_mask=mask, position_ids=positions[:, None],
                                cache=cache, use_cache=True, logits_to_keep=1)
                cache, positions, token = out.cache, positions + 1, out.logits[:, -1].argmax(-1)
        sync(run.device)
        ended = time.perf_counter()
        return {"join_ms": 1000 * (joined - started), "step_ms": 1000 * (ended - joined) / steps,
                "tok_s": count * (steps + 1) / (ended - started)}

    once(4)
    return once(steps)


def queue_row(run, count: int, steps: int, event_loop: bool = False) -> dict:
    """GenerationQueue (worker thread, streaming text), `count` jobs at once, no HTTP. `event_loop`: events go
    to an asyncio loop in another thread, as the server's do (call_soon_threadsafe), where each text piece is
    formatted as the server's SSE chunk (each job's events go to its own asyncio.Queue, read by a task as the
    server's stream does; one loop wake-up per step with job_events.LoopInbox, per event before it)."""
    from lorakit.data.conversation import Message
    from lorakit.inference.generation_queue import GenerationJob, GenerationQueue, JobFailed, JobFinished, TextPiece
    from lorakit.inference.openai_api import chunk_body, sse

    try:
        from lorakit.inference.job_events import LoopInbox
    except ImportError:  # lorakit before session 11 (bench it with PYTHONPATH=<old checkout>/src)
        LoopInbox = None

    loop = asyncio.new_event_loop() if event_loop else None
    if loop is not None:
        threading.Thread(target=loop.run_forever, daemon=True).start()

    def once(steps: int) -> dict:
        work = GenerationQueue(run, max_waiting=count, batch_size=count)
        work.start()
        done, tokens, sent = threading.Semaphore(0), [], []

        def receive(event) -> None:
            if isinstance(event, TextPiece):
                sent.append(sse(chunk_body("chatcmpl-1", "run", {"content": event.text})))
            elif isinstance(event, JobFinished | JobFailed):
                tokens.append(event.completion_tokens if isinstance(event, JobFinished) else repr(event.error))
                done.release()

        async def consume(events: asyncio.Queue) -> None:  # the server's _stream, without the socket
            while True:
                event = await events.get()
                receive(event)
                if not isinstance(event, TextPiece):
                    return

        def emit_to(events: asyncio.Queue):
            if loop is None:
                return receive
            asyncio.run_coroutine_threadsafe(consume(events), loop)
            if LoopInbox is not None:  # as served since session 11: one wake-up of the loop per step
                return LoopInbox(loop, events)
            return lambda event: loop.call_soon_threadsafe(events.put_nowait, event)  # before: one per event

        started = time.perf_counter()
        for index in range(count):
            message = (Message("user", QUESTIONS[index % len(QUESTIONS)]),)
            job = GenerationJob(message, settings(run, steps), stop=(), seed=None, emit=emit_to(asyncio.Queue()))
            assert work.submit(job)
        for _ in range(count):
            done.acquire()
        ended = time.perf_counter()
        work.stop()
        assert all(isinstance(t, int) for t in tokens), tokens
        return {"tok_s": sum(tokens) / (ended - started), "tokens": sum(tokens),
                "step_ms": 1000 * (ended - started) / (steps + 1)}

    once(4)
    result = once(steps)
    if loop is not None:
        loop.call_soon_threadsafe(loop.stop)
    return result


class HostOnlyModel:
    """Stands in for the model so that a step costs only lorakit's own host work: a one-column cache per layer-less
    step and logits over 1,024 tokens looked up from a fixed random table (stop ids never win)."""

    def __init__(self, run, vocabulary: int = 1024):
        import torch

        self.config, self.generation_config = run.model.config, run.model.generation_config
        generator = torch.Generator().manual_seed(0)
        self.table = torch.randn((64, vocabulary), generator=generator).to(run.device)
        from lorakit.inference.generate import stop_token_ids

        self.table[:, [i for i in stop_token_ids(run) if i < vocabulary]] = -1e9

    def __call__(self, input_ids, attention_mask, position_ids, cache, use_cache, logits_to_keep):
        import torch
        from transformers import DynamicCache

        cache = DynamicCache() if cache is None else cache
        column = torch.zeros((input_ids.shape[0], 1, input_ids.shape[1], 1), device=input_ids.device)
        cache.update(column, column, 0)
        logits = self.table[(input_ids[:, -1:] + position_ids[:, -1:]) % self.table.shape[0]]
        return SimpleNamespace(logits=logits, cache=cache)


def host_rows(run, steps: int) -> list[tuple[str, int, dict]]:
    """The loop and the queue (with and without an event loop receiving the events) on HostOnlyModel."""
    from dataclasses import replace

    stub = replace(run, model=HostOnlyModel(run))
    rows = []
    for name, function in (("host only: loop", lambda n: loop_row(stub, n, steps)),
                           ("host only: loop, per-row penalty (before)",
                            lambda n: loop_row(stub, n, steps, per_row_penalty=True)),
                           ("host only: queue", lambda n: queue_row(stub, n, steps)),
                           ("host only: queue + event loop", lambda n: queue_row(stub, n, steps, event_loop=True))):
        for n in SIZES:
            rows.append((name, n, function(n)))
            print(f"  {name}, N={n}: " + ", ".join(f"{k} {v:.2f}" for k, v in rows[-1][2].items()), flush=True)
    return rows
