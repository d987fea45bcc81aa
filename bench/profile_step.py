"""Where a lorakit training step spends its GPU time: torch.profiler over a few of lorakit's own optimizer
steps (Trainer.step, training/trainer.py), kernels grouped by kind, to choose the next optimisation.

    python bench/profile_step.py CONFIG [--set KEY=VALUE ...] [--steps 2] [--out DIR]

CONFIG is any lorakit config (bench/peer_speed.py writes one for the Phi-4-mini-shaped model).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lib.capped_run import cap_allocator  # noqa: E402
from lorakit.config import load_config  # noqa: E402
from lorakit.runtime.device import use_expandable_segments
from lorakit.training.metrics import SilentReporter
from lorakit.training.objective import NextTokenObjective
from lorakit.training.session import BatchesAhead, build_session
from lorakit.training.trainer import Trainer


class PrintingReporter(SilentReporter):
    def message(self, text: str) -> None:
        print(text, flush=True)  # the memory plan the profiled steps run with

# Kernel name patterns -> kind, first match wins.
KINDS = (
    ("gemm (matmul)", r"gemm|sm90_xmma|cutlass|cublas|nvjet|matmul"),
    ("flash attention", r"flash|fmha|attention"),
    ("nf4 dequantize", r"dequant|kDequantize|quantize"),
    ("liger / triton fused", r"liger|triton|_rms|rope|swiglu|cross_entropy"),
    ("dropout / masks", r"bernoulli|dropout|fused_dropout|masked"),
    ("copies / casts", r"copy|cast|convert|to_copy|cat|contiguous|transpose"),
    ("elementwise / reductions", r"elementwise|vectorized|reduce|unrolled|add|mul|fill"),
)


def kind_of(name: str) -> str:
    for kind, pattern in KINDS:
        if re.search(pattern, name, re.IGNORECASE):
            return kind
    return "other"


def _is_label(name: str) -> bool:
    """A phase label's own GPU-side range (it spans kernels and the gaps between them): not a kernel."""
    return name.startswith("lorakit: ") or name.startswith("Optimizer.")


def _labelled(name: str, function):
    def run(*args, **kwargs):
        with torch.profiler.record_function(name):
            return function(*args, **kwargs)
    return run


class LabelledLoss(NextTokenObjective):
    """lorakit's loss, named in the profile once `labelled` is set."""

    labelled = False

    def loss(self, session, batch, target_tokens):
        if not self.labelled:
            return super().loss(session, batch, target_tokens)
        with torch.profiler.record_function("lorakit: forward + loss"):
            return super().loss(session, batch, target_tokens)


class LabelledBatches(BatchesAhead):
    """The session's batches made ahead, their collation named in the profile once `labelled` is set."""

    labelled = False

    def make(self, session, groups):
        if not self.labelled:
            return super().make(session, groups)
        with torch.profiler.record_function("lorakit: next batches (collate)"):
            return super().make(session, groups)

    def take(self, session, group):
        if not self.labelled:
            return super().take(session, group)
        with torch.profiler.record_function("lorakit: take batch (collate if not made ahead)"):
            return super().take(session, group)


def label_phases(loss: LabelledLoss, batches: LabelledBatches) -> None:
    """Name the phases of lorakit's step in the profile, so that host gaps can be charged to them."""
    loss.labelled = batches.labelled = True
    torch.Tensor.backward = _labelled("lorakit: backward", torch.Tensor.backward)
    torch.nn.utils.clip_grad_norm_ = _labelled("lorakit: clip", torch.nn.utils.clip_grad_norm_)


def host_gap_lines(events, steps: int) -> list[str]:
    """Where the GPU waits for the host: every interval of at least 20 us with no kernel running, charged to the
    innermost and the outermost host operation running at the interval's middle on any thread (the forward pass
    runs on the Python thread, backward and recomputation on autograd's). The profiler slows the host, so these
    gaps are longer than in an unprofiled step; wall time minus kernel time bounds those."""
    kernels = sorted((e.time_range.start, e.time_range.end) for e in events
                     if e.device_type == torch.autograd.DeviceType.CUDA and not _is_label(e.name))
    host = sorted((e for e in events if e.device_type == torch.autograd.DeviceType.CPU),
                  key=lambda e: e.time_range.start)
    if not kernels or not host:
        return []
    gaps, busy_until = [], kernels[0][1]
    for start, end in kernels[1:]:
        if start - busy_until >= 20:
            gaps.append((busy_until, start))
        busy_until = max(busy_until, end)
    inner: dict[str, float] = defaultdict(float)
    outer: dict[str, float] = defaultdict(float)
    for start, end in gaps:
        middle = (start + end) / 2
        running = [e for e in host if e.time_range.start <= middle <= e.time_range.end]
        if not running:
            inner["(no host operation: Python between calls)"] += end - start
            outer["(no host operation: Python between calls)"] += end - start
            continue
        inner[min(running, key=lambda e: e.time_range.end - e.time_range.start).name] += end - start
        outer[max(running, key=lambda e: e.time_range.end - e.time_range.start).name] += end - start
    total = sum(end - start for start, end in gaps)
    lines = ["", f"GPU idle between kernels (gaps >= 20 us): {total / steps / 1e3:.1f} ms per step in {len(gaps) / steps:.0f} gaps",
             "", "| host operation at the gap (innermost) | ms per step |", "|---|---|"]
    lines += [f"| {name[:100]} | {micros / steps / 1e3:.2f} |"
              for name, micros in sorted(inner.items(), key=lambda item: -item[1])[:15]]
    lines += ["", "| host operation at the gap (outermost) | ms per step |", "|---|---|"]
    lines += [f"| {name[:100]} | {micros / steps / 1e3:.2f} |"
              for name, micros in sorted(outer.items(), key=lambda item: -item[1])[:10]]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--cap-gib", type=float, default=None, help="cap PyTorch's allocator (an emulated card)")
    parser.add_argument("--name", default="profile", help="file name of the table under --out")
    args = parser.parse_args()
    if args.cap_gib is not None:  # lorakit's allocator settings first, as lorakit train sets them (loop.train)
        cap_allocator(args.cap_gib)
    else:
        use_expandable_segments()
    config = load_config(args.config, args.overrides + ["training.max_steps=1000000"])  # never the last step
    session = build_session(config, PrintingReporter())
    loss, batches = LabelledLoss(), LabelledBatches()
    session.ahead = batches
    trainer = Trainer(session, Path("unused-run-dir"), scaler=None, objective=loss, recover_from_oom=False)

    def one_step() -> None:  # as `lorakit train` runs it, the next step's batches made during backward
        trainer.step()

    for _ in range(args.warmup):
        one_step()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(args.steps):  # wall time without the profiler: GPU time below this is host overhead
        one_step()
    torch.cuda.synchronize()
    wall = (time.perf_counter() - started) / args.steps
    label_phases(loss, batches)  # after the timed steps: the labels cost a little host time
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as profiler:
        for _ in range(args.steps):
            one_step()
        torch.cuda.synchronize()
    events = [e for e in profiler.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA
              and not _is_label(e.key)]
    total = sum(e.self_device_time_total for e in events)
    by_kind: dict[str, float] = defaultdict(float)
    for event in events:
        by_kind[kind_of(event.key)] += event.self_device_time_total
    lines = ["command: python bench/profile_step.py " + " ".join(sys.argv[1:]), "",
             f"wall time per step: {wall * 1e3:.1f} ms; GPU kernel time per step: {total / args.steps / 1e3:.1f} ms "
             f"(the difference, {wall * 1e3 - total / args.steps / 1e3:.1f} ms, bounds the GPU's wait for the host)",
             "", "| kind | ms per step | share |",
             "|---|---|---|"]
    for kind, micros in sorted(by_kind.items(), key=lambda item: -item[1]):
        lines.append(f"| {kind} | {micros / args.steps / 1e3:.1f} | {micros / total:.1%} |")
    lines += ["", "| kernel | calls per step | ms per step | share |", "|---|---|---|---|"]
    for event in sorted(events, key=lambda e: -e.self_device_time_total)[:40]:
        lines.append(f"| {event.key[:110]} | {event.count / args.steps:.0f} | "
                     f"{event.self_device_time_total / args.steps / 1e3:.2f} | {event.self_device_time_total / total:.1%} |")
    lines += host_gap_lines(profiler.events(), args.steps)
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{args.name}.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
