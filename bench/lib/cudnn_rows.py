"""bench/serve_step_profile.py --only cudnn: what SDPA's cuDNN backend costs a decoding step at KV lengths the
process has not decoded before (a server's every step), against the same steps with cuDNN excluded
(inference/attention_backend.py), and against lengths already seen (cuDNN's cached graphs), at N=1 and N=8.
Also the excluded step with peft's LoRA forward (before model/inference_lora.py), and with the LoRA weights back in
fp32 as well (peft's load, before model/adapter_dtype.py: an fp32 adapter on a bf16 base is peft's forward anyway).

Every measurement decodes its own range of lengths, never used before in this process: a warm-up of 4 steps
in one range (kernels picked, allocator grown), then the timed steps in the next."""

from __future__ import annotations

import os
import time

from lib.decode_step_rows import prompts, settings, sync


class _Lengths:
    """Hands out disjoint ranges of KV lengths, each `width` long, in increasing order."""

    def __init__(self, start: int, width: int):
        self.next, self.width = start, width

    def take(self) -> int:
        start, self.next = self.next, self.next + self.width
        return start


def _rows_at(run, count: int, length: int) -> list[list[int]]:
    """`count` prompts, the longest `length` tokens (the others 1, 2, ... shorter: left padding as in serve)."""
    base = prompts(run, count)
    return [(p * (length // len(p) + 1))[:length - row] for row, p in enumerate(base)]


def _timed_steps(run, count: int, steps: int, length: int) -> float:
    """ms per step of `steps` RunningBatch steps after a join of prompts `length` tokens long."""
    from lorakit.inference.generate import _pad_id
    from lorakit.inference.running_batch import RowRequest, RunningBatch

    chosen = settings(run, 10**6)
    batch = RunningBatch(run.model, stop_ids=[], pad_id=_pad_id(run), device=run.device)
    batch.join([RowRequest(i, p, chosen) for i, p in enumerate(_rows_at(run, count, length))])
    sync(run.device)
    started = time.perf_counter()
    for _ in range(steps):
        batch.step()
    sync(run.device)
    return 1000 * (time.perf_counter() - started) / steps


def _measure(run, count: int, steps: int, lengths: _Lengths, repeat_at: int | None = None) -> tuple[dict, int]:
    _timed_steps(run, count, 4, lengths.take())  # warm-up at lengths of its own
    start = lengths.take() if repeat_at is None else repeat_at
    step_ms = _timed_steps(run, count, steps, start)
    return {"step_ms": step_ms, "tok_s": 1000 * count / step_ms}, start


def _cudnn(allowed: bool) -> None:
    """The ablation switch (runtime/ablation.py), read at every decoding step."""
    others = [n for n in os.environ.get("LORAKIT_DISABLE", "").split(",") if n.strip() not in ("", "decode_without_cudnn")]
    os.environ["LORAKIT_DISABLE"] = ",".join(others + (["decode_without_cudnn"] if allowed else []))


def _lora_dtype(run, dtype) -> None:
    for name, parameter in run.model.named_parameters():
        if "lora_" in name:
            parameter.data = parameter.data.to(dtype)


class _PeftForward:
    """peft's own forward on every LoRA layer inside the block (load_run's inference forward put back after)."""

    def __init__(self, model):
        self.model, self.saved = model, {}

    def __enter__(self):
        self.saved = {m: vars(m).pop("forward") for m in self.model.modules() if "forward" in vars(m)}

    def __exit__(self, *exc):
        for module, forward in self.saved.items():
            module.forward = forward


def cudnn_rows(run, steps: int) -> list[tuple[str, int, dict]]:
    import torch

    lengths = _Lengths(start=256, width=steps + 8)
    dtype = next(p.dtype for name, p in run.model.named_parameters() if "lora_" in name)
    rows = []
    for count in (1, 8):
        _cudnn(allowed=True)
        result, start = _measure(run, count, steps, lengths)
        rows.append(("cuDNN allowed, new lengths", count, result))
        rows.append(("cuDNN allowed, lengths seen before", count,
                     _measure(run, count, steps, lengths, repeat_at=start)[0]))
        _cudnn(allowed=False)
        rows.append(("cuDNN excluded (as served), new lengths", count, _measure(run, count, steps, lengths)[0]))
        with _PeftForward(run.model):
            rows.append(("cuDNN excluded, peft's LoRA forward (before), new lengths", count,
                         _measure(run, count, steps, lengths)[0]))
        _lora_dtype(run, torch.float32)
        rows.append(("cuDNN excluded, LoRA fp32 (before), new lengths", count,
                     _measure(run, count, steps, lengths)[0]))
        _lora_dtype(run, dtype)
        for name, n, result in rows[-5:]:
            print(f"  {name}, N={n}: {result['step_ms']:.2f} ms/step, {result['tok_s']:.1f} tok/s", flush=True)
    _cudnn(allowed=False)
    return rows
