"""Issue 12, FSDP2: bf16 LoRA of a Phi-4-mini-shaped model (random weights; bench/multi_gpu.py builds it) on
1 GPU, 2 GPUs with ddp and 2 GPUs with fsdp, then on emulated 8 GB cards (each process's allocator capped to
8 GiB minus the CUDA context), where one GPU cannot hold bf16 Phi-4-mini but fsdp over 2 can. Every row is the
public CLI under torchrun, with this script as the torchrun entry only to cap the allocator first:

    python -m torch.distributed.run --standalone --nproc-per-node G bench/fsdp.py --worker [--cap-gib C] \\
        train CONFIG --set training.distributed=ddp|fsdp --set ...

    python bench/fsdp.py [--out bench/results/multi_gpu/fsdp] [--steps 8] [--smoke]   (--smoke: tiny, CPU too)

tokens/s: median of lorakit's per-step `tokens_per_second` (metrics.jsonl, real tokens of all ranks) after 3
warm-up steps. Peak per GPU: the highest nvidia-smi memory.used while the row ran (CUDA context included).
The unconstrained rows share one global batch (micro-batch 16 x 512 packed tokens, 4 per optimizer step), so
their losses compare step by step; on the 8 GB cards the 1-GPU row asks the planner (which refuses: bf16
weights alone exceed the card) and the fsdp row runs micro-batch 2 with every layer checkpointed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from lib.capped_run import cap_allocator, eight_gb_cap_gib  # noqa: E402
from lib.gpu_runs import launch_row  # noqa: E402
from lib.phi4_mini_run import PHI4_MINI, SMOKE, build_model, write_config  # noqa: E402
from lib.step_speed import run_speed  # noqa: E402

EIGHT_GB_CAP_GIB = eight_gb_cap_gib()
# (name, processes, training.distributed, allocator cap in GiB or None, extra --set overrides)
ROWS = [
    ("1gpu", 1, "ddp", None, []),
    ("2gpu-ddp", 2, "ddp", None, []),
    ("2gpu-fsdp", 2, "fsdp", None, []),
    ("8gb-1gpu", 1, "ddp", EIGHT_GB_CAP_GIB, ["training.batch_size=auto", "training.gradient_checkpointing=auto"]),
    # Fixed, not planned (the run that measured it predates the planner's NCCL reserve; the plan is now micro-batch 2,
    # 31 of 32 layers, tests/plan/test_sharded.py).
    ("8gb-2gpu-fsdp", 2, "fsdp", EIGHT_GB_CAP_GIB, ["training.batch_size=2", "training.gradient_checkpointing=true"]),
]


def worker(cap_gib: float | None, lorakit_args: list[str]) -> int:
    """One torchrun process: cap this rank's GPU allocator (an emulated smaller card), then `lorakit ARGS`."""
    if cap_gib is not None and torch.cuda.is_available():
        cap_allocator(cap_gib, device=int(os.environ.get("LOCAL_RANK", "0")))
    from lorakit.cli.app import run_cli

    return run_cli(lorakit_args)


def run_row(config: Path, root: Path, row: tuple, log, row_timeout: int = 240) -> dict:
    name, gpus, distributed, cap_gib, extra = row
    entry = [str(Path(__file__).resolve()), "--worker", *(["--cap-gib", str(cap_gib)] if cap_gib else [])]
    done, result = launch_row(
        root, name, gpus, entry,
        ["train", str(config), "--set", f"output_dir={root / name}", "--set", "model.quantization=none",
         "--set", f"training.distributed={distributed}", *[a for s in extra for a in ("--set", s)]], log, row_timeout)
    result |= {"distributed": distributed, "cap_gib": cap_gib}
    if done.returncode != 0:
        text = (done.stdout + done.stderr).splitlines()  # lorakit's own error lines, not torchrun's ChildFailedError
        lines = [line for line in text if line.startswith(("error:", "  - "))] or [
            line for line in text if "error" in line.lower()][-3:]
        return {**result, "error": " ".join(lines)[-600:] or done.stderr[-600:]}
    plan = [line for line in done.stdout.splitlines() if line.startswith("memory plan:")]
    return {**result, **run_speed(root / name, warmup=3), "plan": plan[0] if plan else None}


def table(rows: list[dict]) -> str:
    lines = ["| row | GPUs | strategy | GPU memory | tokens/s | vs 1 GPU | peak GiB per GPU (nvidia-smi) | "
             "max abs train-loss diff vs 1 GPU |", "|---|---|---|---|---|---|---|---|"]
    one = next((r for r in rows if r["row"] == "1gpu" and "error" not in r), None)
    for row in rows:
        memory = f"capped {row['cap_gib']} GiB (8 GB card)" if row["cap_gib"] else "full"
        peaks = ", ".join("-" if p is None else f"{p / 1024:.1f}" for p in row["peak_mib_per_gpu"])
        head = f"| {row['row']} | {row['gpus']} | {row['distributed']} | {memory} |"
        if "error" in row:
            lines.append(f"{head} does not run: {row['error'][-240:]!r} | | {peaks} | |")
            continue
        ratio = row["tokens_per_second"] / one["tokens_per_second"] if one else float("nan")
        same_batch = one and not row["cap_gib"]
        loss_diff = (max(abs(a - b) for a, b in zip(row["train_losses"], one["train_losses"])) if same_batch
                     else float("nan"))
        lines.append(f"{head} {row['tokens_per_second']:,.0f} | {ratio:.2f}x | {peaks} | "
                     f"{'%.1e' % loss_diff if same_batch else 'other batch'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "multi_gpu" / "fsdp")
    parser.add_argument("--work", type=Path, default=Path("/tmp/lorakit-fsdp"))
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--smoke", action="store_true", help="tiny model (CPU is fine): checks the script only")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    start = time.perf_counter()
    build_model(args.work / "model", SMOKE if args.smoke else PHI4_MINI)
    config = write_config(args.work, args.work / "model", smoke=args.smoke, steps=args.steps)
    print(f"model and data ready in {time.perf_counter() - start:.0f} s", flush=True)
    (args.out / "rows.jsonl").unlink(missing_ok=True)
    rows = []
    with open(args.out / "log.txt", "w") as log:
        for row in ROWS:
            rows.append(run_row(config, args.work, row, log))
            with open(args.out / "rows.jsonl", "a") as handle:
                handle.write(json.dumps(rows[-1]) + "\n")
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "train_losses"}), flush=True)
    env = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
           "gpus_visible": torch.cuda.device_count(), "steps": args.steps, "smoke": args.smoke,
           "total_seconds": round(time.perf_counter() - start)}
    (args.out / "env.json").write_text(json.dumps(env, indent=1))
    text = table(rows)
    (args.out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        cap = None
        rest = sys.argv[2:]
        if rest[:1] == ["--cap-gib"]:
            cap, rest = float(rest[1]), rest[2:]
        sys.exit(worker(cap, rest))
    main()
