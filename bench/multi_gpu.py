"""Issue 12 benchmark: data-parallel `lorakit train` on 1 and 2 GPUs, QLoRA and bf16 LoRA, on a
Phi-4-mini-shaped model with random weights, every row through the public CLI under torchrun:

    python -m torch.distributed.run --standalone --nproc-per-node G -m lorakit train CONFIG --set ...

    python bench/multi_gpu.py --out DIR [--steps 10] [--smoke]     (--smoke: tiny model, runs on CPU too)

Same global batch in every row (micro-batch x accumulation), so 2 GPUs run the same optimizer steps as 1
with half the micro-batches each. tokens/s is the median of lorakit's own per-step `tokens_per_second`
(metrics.jsonl; real, non-padding tokens of all ranks) after the warm-up steps; scaling = tokens/s with 2 GPUs
over 1; efficiency = scaling / 2. Peak memory per GPU is the highest `memory.used` nvidia-smi reported for
each GPU while the row ran (CUDA context included). The loss column compares the 2-GPU training losses with
the 1-GPU ones (max abs difference over all steps): they train the same examples per step.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from lib.gpu_runs import launch_row  # noqa: E402
from lib.phi4_mini_run import PHI4_MINI, SMOKE, build_model, write_config  # noqa: E402
from lib.step_speed import run_speed  # noqa: E402

def run_row(config: Path, root: Path, name: str, gpus: int, quantization: str, log) -> dict:
    done, row = launch_row(root, name, gpus, ["-m", "lorakit"], ["train", str(config), "--set",
                           f"output_dir={root / name}", "--set", f"model.quantization={quantization}"], log)
    row["quantization"] = quantization
    if done.returncode != 0:
        return {**row, "error": done.stderr[-800:]}
    return {**row, **run_speed(root / name, warmup=3)}


def table(rows: list[dict]) -> str:
    lines = ["| mode | GPUs | tokens/s | scaling vs 1 GPU | efficiency | peak GiB per GPU (nvidia-smi) | "
             "max abs train-loss diff vs 1 GPU |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['quantization']} | {row['gpus']} | failed: {row['error'][-200:]!r} | | | | |")
            continue
        one = next((r for r in rows if r["quantization"] == row["quantization"] and r["gpus"] == 1
                    and "error" not in r), None)
        scaling = row["tokens_per_second"] / one["tokens_per_second"] if one else float("nan")
        loss_diff = max(abs(a - b) for a, b in zip(row["train_losses"], one["train_losses"])) if one else float("nan")
        peaks = ", ".join("-" if p is None else f"{p / 1024:.1f}" for p in row["peak_mib_per_gpu"])
        mode = "QLoRA (nf4)" if row["quantization"] == "nf4" else "bf16 LoRA"
        lines.append(f"| {mode} | {row['gpus']} | {row['tokens_per_second']:,.0f} | {scaling:.2f}x | "
                     f"{scaling / row['gpus']:.0%} | {peaks} | {loss_diff:.1e} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/lorakit-multi-gpu"))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--smoke", action="store_true", help="tiny model (CPU is fine): checks the script only")
    parser.add_argument("--modes", default="nf4,none", help="model.quantization values, in order")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    model_dir = args.work / "model"
    start = time.perf_counter()
    build_model(model_dir, SMOKE if args.smoke else PHI4_MINI)
    config = write_config(args.work, model_dir, smoke=args.smoke, steps=args.steps)
    print(f"model and data ready in {time.perf_counter() - start:.0f} s", flush=True)
    rows = []
    with open(args.out / "log.txt", "w") as log:
        for quantization in args.modes.split(","):
            for gpus in (1, 2):
                row = run_row(config, args.work, f"{quantization}-{gpus}gpu", gpus, quantization, log)
                rows.append(row)
                with open(args.out / "rows.jsonl", "a") as handle:
                    handle.write(json.dumps(row) + "\n")
                print(json.dumps({k: v for k, v in row.items() if k != "train_losses"}), flush=True)
    env = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
           "gpus_visible": torch.cuda.device_count(), "steps": args.steps, "smoke": args.smoke}
    (args.out / "env.json").write_text(json.dumps(env, indent=1))
    text = table(rows)
    (args.out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
