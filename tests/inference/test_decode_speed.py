"""Issue 23's decoding-step fixes: no cuDNN attention while decoding, LoRA weights in the base dtype after an
inference load, and one event-loop wake-up per step for all the server's streams."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from evaluation.eval_runs import trained_tiny_run
from lorakit.data.records import Message
from lorakit.inference import generate as generate_module
from lorakit.inference.attention_backend import decoding_attention
from lorakit.inference.generate import GenerationSettings, generate_answer, generate_answers, load_run, stream_answer
from lorakit.inference.generation_queue import GenerationJob, GenerationQueue, JobFinished, TextPiece
from lorakit.inference.job_events import LoopInbox
from lorakit.inference.running_batch import RowRequest, RunningBatch

GREEDY = GenerationSettings(max_new_tokens=6, temperature=0.0, repetition_penalty=1.1)
QUESTIONS = [(Message("user", "What is insulin?"),), (Message("user", "What do kidneys do all day long?"),),
             (Message("user", "Fever?"),), (Message("user", "Why does a cough linger after a cold?"),)]


@pytest.fixture(scope="module")
def run(tiny_llama_dir, tmp_path_factory):
    return load_run(trained_tiny_run(tiny_llama_dir, tmp_path_factory.getbasetemp() / "eval-workspace"))


def _answers(run) -> list[tuple[int, ...]]:
    """Greedy answers of every decoding path: model.generate (chat), stream_answer, decode_batch (eval), RunningBatch
    (serve)."""
    one = tuple(generate_answer(run, QUESTIONS[0], GREEDY)[1])
    ended = []
    "".join(stream_answer(run, QUESTIONS[1], GREEDY, on_end=ended.append))
    batched = [a.token_ids for a in generate_answers(run, QUESTIONS, GREEDY)]
    batch = RunningBatch(run.model, stop_ids=[], pad_id=0, device=run.device)
    served = [new.token for new in batch.join([RowRequest(0, [1, 2, 3], GREEDY)])]
    served += [new.token for new in batch.step()]
    return [one, ended[0].token_ids, *batched, tuple(served)]


def test_every_decoding_path_runs_without_cudnn_attention_and_answers_the_same(run, monkeypatch):
    seen: list[bool] = []
    hook = run.model.get_base_model().register_forward_pre_hook(
        lambda module, args: seen.append(torch.backends.cuda.cudnn_sdp_enabled()))
    try:
        assert torch.backends.cuda.cudnn_sdp_enabled()
        excluded = _answers(run)
        assert len(seen) >= 10 and not any(seen), "cuDNN attention was allowed in some decoding forward"
        assert torch.backends.cuda.cudnn_sdp_enabled(), "the flag is restored after decoding"
        seen.clear()
        monkeypatch.setenv("LORAKIT_DISABLE", "decode_without_cudnn")
        assert _answers(run) == excluded
        assert seen and all(seen)
    finally:
        hook.remove()


def test_nested_and_concurrent_decoders_restore_the_flag_only_when_the_last_one_leaves():
    first, second = decoding_attention(), decoding_attention()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert not torch.backends.cuda.cudnn_sdp_enabled()
    second.__exit__(None, None, None)
    assert torch.backends.cuda.cudnn_sdp_enabled()


def test_adapter_weights_take_the_base_dtype_after_an_inference_load(tiny_llama_dir, tmp_path_factory, monkeypatch):
    monkeypatch.setattr(generate_module, "compute_dtype", lambda precision, device: torch.bfloat16)
    # peft's LoRA forward, which calls the lora_A module hooked below (model/inference_lora.py reads its weight)
    monkeypatch.setenv("LORAKIT_DISABLE", "inference_lora")
    run = load_run(trained_tiny_run(tiny_llama_dir, tmp_path_factory.getbasetemp() / "eval-workspace"))
    lora = {name: p.dtype for name, p in run.model.named_parameters() if "lora_" in name}
    assert lora and set(lora.values()) == {torch.bfloat16}
    inputs: list[torch.dtype] = []
    module = next(m for name, m in run.model.named_modules() if name.endswith("lora_A.default"))
    module.register_forward_pre_hook(lambda m, args: inputs.append(args[0].dtype))
    generate_answer(run, QUESTIONS[0], GREEDY)
    assert inputs and set(inputs) == {torch.bfloat16}, "a LoRA product ran in fp32"

    monkeypatch.setenv("LORAKIT_DISABLE", "adapter_in_base_dtype")  # peft's own load, for contrast
    run = load_run(trained_tiny_run(tiny_llama_dir, tmp_path_factory.getbasetemp() / "eval-workspace"))
    assert {p.dtype for name, p in run.model.named_parameters() if "lora_" in name} == {torch.float32}


def test_fp32_base_keeps_its_answers(run, monkeypatch):
    """On CPU (fp32) the cast is a no-op: the same answers with the switch off."""
    cast = _answers(run)
    monkeypatch.setenv("LORAKIT_DISABLE", "adapter_in_base_dtype")
    assert _answers(run) == cast


def _serve(run, loop: asyncio.AbstractEventLoop, inbox: bool) -> list[list[object]]:
    """Four streamed jobs through the generation queue; each job's events, in the order its queue got them."""
    queues = [asyncio.Queue() for _ in QUESTIONS]
    work = GenerationQueue(run, max_waiting=len(QUESTIONS), batch_size=len(QUESTIONS))
    for question, events in zip(QUESTIONS, queues):
        emit = LoopInbox(loop, events) if inbox else (lambda event, e=events: loop.call_soon_threadsafe(e.put_nowait, event))
        assert work.submit(GenerationJob(question, GREEDY, (), None, emit))
    work.start()  # all four were waiting: they join the batch together

    async def drain(events: asyncio.Queue) -> list[object]:
        got = [await events.get()]
        while not isinstance(got[-1], JobFinished):
            got.append(await events.get())
        return got

    got = [asyncio.run_coroutine_threadsafe(drain(events), loop).result(timeout=60) for events in queues]
    work.stop()
    return got


def test_one_event_loop_wake_up_per_step_for_all_streams_in_the_same_order(run):
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    wake_ups = []
    real = loop.call_soon_threadsafe
    loop.call_soon_threadsafe = lambda *args: (wake_ups.append(threading.current_thread().name), real(*args))[1]
    try:
        per_row = _serve(run, loop, inbox=False)
        per_row_wake_ups = wake_ups.count("lorakit-generation")
        wake_ups.clear()
        per_step = _serve(run, loop, inbox=True)
    finally:
        real(loop.stop)
    assert per_step == per_row
    events = sum(map(len, per_step))
    assert any(isinstance(e, TextPiece) for e in per_step[0]) and per_row_wake_ups == events
    # The join's first tokens, then GREEDY.max_new_tokens - 1 steps: one wake-up each, for all four jobs.
    assert wake_ups.count("lorakit-generation") <= GREEDY.max_new_tokens < events


def test_the_flag_is_restored_when_decoding_fails_and_across_threads():
    """An out-of-memory error (or any) inside a decoding step gives the flag back; two threads (serve's worker and
    the studio's) share one count."""
    with pytest.raises(torch.OutOfMemoryError):
        with decoding_attention():
            raise torch.OutOfMemoryError("CUDA out of memory")
    assert torch.backends.cuda.cudnn_sdp_enabled()
    inside, leave = threading.Barrier(2), threading.Event()

    def decoder():
        with decoding_attention():
            inside.wait(timeout=10)
            leave.wait(timeout=10)

    other = threading.Thread(target=decoder)
    other.start()
    with decoding_attention():
        inside.wait(timeout=10)
    assert not torch.backends.cuda.cudnn_sdp_enabled(), "restored while the other thread still decodes"
    leave.set()
    other.join(timeout=10)
    assert torch.backends.cuda.cudnn_sdp_enabled()


def test_a_closed_event_loop_cancels_its_jobs_and_the_other_loops_still_get_theirs_in_order():
    """Server shutdown: the loop is closed, call_soon_threadsafe raises RuntimeError; the outbox cancels every job
    bound for that loop (the worker then drops them) and still delivers the rest, each queue in emitted order."""
    from lorakit.inference.job_events import Outbox

    closed, live = asyncio.new_event_loop(), asyncio.new_event_loop()
    closed.close()
    try:
        gone, kept = [asyncio.Queue(), asyncio.Queue()], asyncio.Queue()
        cancelled, called = [], []
        outbox = Outbox()
        for step in range(3):
            outbox.add(LoopInbox(closed, gone[step % 2]), step, lambda step=step: cancelled.append(step))
            outbox.add(LoopInbox(live, kept), step, lambda: cancelled.append("live"))
            outbox.add(called.append, step, lambda: cancelled.append("plain"))
        outbox.flush()
        assert sorted(cancelled) == [0, 1, 2] and called == [0, 1, 2]
        live.run_until_complete(asyncio.sleep(0))
        assert [kept.get_nowait() for _ in range(kept.qsize())] == [0, 1, 2]
        outbox.flush()  # nothing held: nothing delivered twice
        live.run_until_complete(asyncio.sleep(0))
        assert kept.empty() and called == [0, 1, 2]
    finally:
        live.close()
