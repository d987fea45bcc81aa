"""Issue 4, point 4 and issue 11 on a real GPU: real CUDA out-of-memory errors inside lorakit training steps.

    python bench/oom_real.py --out DIR [--micro-batch 16] [--max-length 1024] [--steps 6]
    python bench/oom_real.py --scenario replan-8gb --out DIR [--steps 8] [--cap-gib 7.25]

Scenario replan-8gb (issue 11): an 8 GB card emulated on a big GPU (PyTorch's allocator capped at --cap-gib, so
the planner plans for the cap + the CUDA context), a Phi-4-mini-shaped QLoRA model with random weights, packed
synthetic chats at max_length 512, and two runs of the public command, each in a fresh process:

  planner   `lorakit train configs/phi4_mini_qlora.yaml --set training.batch_size=auto
            --set training.gradient_checkpointing=auto --set training.gradient_accumulation_steps=4 ...`
  replan    the same with `--set training.batch_size=64 --set training.gradient_checkpointing=false
            --set training.gradient_accumulation_steps=1` (same tokens per optimizer step): step 1 runs out of
            memory and must re-plan (plan/oom.py) instead of halving six times to micro-batch 2.

It reports each run's tokens/s (median of the logged steps after the first), PyTorch's peaks, the GPU's used
memory (NVML), the plan line and every out-of-memory message, and the ratio replan / planner. Writes
DIR/replan_8gb.json, DIR/replan_8gb.md and DIR/log.txt.

The CPU tests inject torch.OutOfMemoryError; this script makes the CUDA caching allocator raise it for real by
capping the process's memory (torch.cuda.set_per_process_memory_fraction), and drives the real
`lorakit.training.loop.train` on a random Llama-shaped model (bf16 LoRA, padded micro-batches):

  calibrate  two uncapped runs (micro-batch B and B/4) measure the reserved-memory peak per micro-batch row.
  recover    the cap sits between what B/4 and B/2 rows need: the run must recover (since issue 11 by re-planning:
             checkpointing before halving; else halving B -> B/2 -> B/4), say so, and finish. Its adapter is
             compared with the uncapped B run (same examples per optimizer step; only bf16 summation order differs).
  give up    after step 2 the cap drops below what micro-batch 1 needs: the run must stop with TrainingError
             (advice: max_length, gradient checkpointing, QLoRA) and leave a verified checkpoint at step 2;
             resuming without the cap must finish the run.

Prints a table and writes DIR/oom_real.json and DIR/log.txt.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lib.capped_run import eight_gb_cap_gib  # noqa: E402
from lib.step_speed import measured_speeds  # noqa: E402
from lib.synthetic_chat import synthetic_conversations  # noqa: E402

from lorakit.config import RunConfig  # noqa: E402
from lorakit.errors import TrainingError  # noqa: E402
from lorakit.training import loop  # noqa: E402
from lorakit.run.checkpoints import list_checkpoints, verify_checkpoint  # noqa: E402
from lorakit.training.metrics import SilentReporter  # noqa: E402

GIB = 2**30
LOG: list[str] = []


def say(text: str) -> None:
    print(text, flush=True)
    LOG.append(text)


class Recorder(SilentReporter):
    """Keeps the loop's messages (the out-of-memory notices among them); optionally acts at a step."""

    def __init__(self, at_step: int | None = None, action=None):
        self.messages: list[str] = []
        self.at_step, self.action = at_step, action

    def message(self, text: str) -> None:
        self.messages.append(text)
        say(f"    lorakit: {text}")

    def step(self, step: int, metrics: dict) -> None:
        if step == self.at_step and self.action is not None:
            self.action()


def build_model(directory: Path, tokenizer_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=1024, intermediate_size=4096, num_hidden_layers=8,
                         num_attention_heads=16, num_key_value_heads=8, max_position_embeddings=4096,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(directory, safe_serialization=True)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(directory)


def write_data(path: Path, count: int) -> None:
    rows = []
    for conversation in synthetic_conversations(count, seed=1, answer_median_words=900, sigma=0.2, min_answer_words=700):
        question, answer = (m.content for m in conversation.messages)
        rows.append(json.dumps({"instruction": question, "response": answer}))
    path.write_text("\n".join(rows) + "\n")


def run_config(args, model_dir: Path, data: Path, run_dir: Path, micro_batch: int, accumulation: int) -> RunConfig:
    return RunConfig.model_validate({
        "seed": 11, "output_dir": str(run_dir),
        "model": {"name": str(model_dir), "max_length": args.max_length, "quantization": "none"},
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
        "training": {"batch_size": micro_batch, "gradient_accumulation_steps": accumulation, "max_steps": args.steps,
                     "learning_rate": 1e-4, "lr_scheduler": "constant", "precision": "bf16",
                     "gradient_checkpointing": False, "packing": False, "logging_steps": 1, "save_steps": 2,
                     "eval_steps": 1000, "save_total_limit": 3},
        "data": {"train_file": str(data), "validation_split": 0.0, "test_split": 0.0, "allow_phi": True},
    })


def set_cap(bytes_allowed: float | None) -> None:
    total = torch.cuda.get_device_properties(0).total_memory
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(1.0 if bytes_allowed is None else min(1.0, bytes_allowed / total))


def peak_run(config: RunConfig, reporter=None) -> tuple[object, int]:
    """Train and return (result, peak reserved bytes); memory is released first so peaks are comparable."""
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    result = loop.train(config, overwrite=True, reporter=reporter or Recorder())
    peak = torch.cuda.max_memory_reserved()
    gc.collect()
    torch.cuda.empty_cache()
    return result, peak


def adapter_difference(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    first, second = load_file(a / "adapter_model.safetensors"), load_file(b / "adapter_model.safetensors")
    return max(float((first[k].float() - second[k].float()).abs().max()) for k in first)


REPO = Path(__file__).resolve().parents[1]
REPLAN_RUNS = {  # name -> the --set overrides that differ (same tokens per optimizer step: 64 x 512 packed)
    "planner": ["training.batch_size=auto", "training.gradient_checkpointing=auto",
                "training.gradient_accumulation_steps=4"],
    "replan": ["training.batch_size=64", "training.gradient_checkpointing=false", "training.gradient_accumulation_steps=1"],
}


def replan_8gb(args) -> int:
    """Issue 11: the re-planned speed of a fixed micro-batch 64 without checkpointing, against the planner's own
    choice, on an emulated 8 GB card, both through `lorakit train` (see the module docstring)."""
    import statistics
    import subprocess

    from gpu_speed_memory import PHI4_MINI, build_random_model
    from planner_holdout import GpuMemoryPoller
    from transformers import AutoTokenizer

    started = time.perf_counter()
    model_dir, data = args.out / "phi4-mini-random", args.out / "chats.jsonl"
    build_random_model(model_dir, PHI4_MINI)
    AutoTokenizer.from_pretrained(args.tokenizer).save_pretrained(model_dir)
    rows = [json.dumps({"instruction": q.content, "response": a.content})
            for q, a in (c.messages for c in synthetic_conversations(1536, seed=0))]
    data.write_text("\n".join(rows) + "\n")
    torch.cuda.empty_cache()
    say(f"device: {torch.cuda.get_device_name(0)}; torch {torch.__version__}; cap {args.cap_gib} GiB; model and data "
        f"ready in {time.perf_counter() - started:.0f}s")
    common = [f"model.name={model_dir}", "model.max_length=512", "model.quantization=nf4", f"data.train_file={data}",
              "data.validation_split=0", "data.test_split=0", "data.allow_phi=true", f"training.max_steps={args.steps}",
              "training.logging_steps=1", "training.eval_steps=1000", "training.save_steps=1000",
              "training.warmup_steps=0", "training.early_stopping_patience=null", "training.packing=true",
              "eval.after_training=false"]
    results = {}
    for name, sets in REPLAN_RUNS.items():
        run_dir, peak_file = args.out / f"run-{name}", args.out / f"peak-{name}.json"
        argv = ["train", str(REPO / "configs" / "phi4_mini_qlora.yaml"), "--overwrite",
                *[part for item in [*common, f"output_dir={run_dir}", *sets] for part in ("--set", item)]]
        row = {"command": "lorakit " + " ".join(argv)}
        begun = time.perf_counter()
        with GpuMemoryPoller() as poller:
            try:
                done = subprocess.run([sys.executable, str(REPO / "bench" / "lib" / "capped_run.py"), "--cap-gib",
                                       str(args.cap_gib), "--peak-file", str(peak_file), "-m", "lorakit", *argv],
                                      capture_output=True, text=True, timeout=100,  # two runs + setup < 4 minutes
                                      env={**os.environ, "COLUMNS": "1000"})  # one message per line
                row["exit"], output = done.returncode, done.stdout + done.stderr
            except subprocess.TimeoutExpired as exc:
                row["exit"], output = "timeout", f"{exc.stdout or ''}{exc.stderr or ''}"
        row["seconds"] = time.perf_counter() - begun
        row["nvml_used_gib"] = (poller.peak - poller.baseline) / GIB
        if peak_file.is_file():
            row.update({k: v / GIB for k, v in json.loads(peak_file.read_text()).items()})
        lines = [line.strip() for line in output.splitlines()]
        row["plan"] = next((line for line in lines if line.startswith("memory plan:")), None)
        row["oom_messages"] = [line for line in lines if line.startswith("out of memory")]
        speeds = measured_speeds(run_dir, warmup=1) if (run_dir / "metrics.jsonl").is_file() else []
        row["tokens_per_s"] = statistics.median(speeds) if speeds else None
        if row["exit"] != 0:
            row["error"] = output[-3000:]
        results[name] = row
        say(f"{name}: exit {row['exit']} in {row['seconds']:.0f}s, {row['tokens_per_s']} tok/s, plan {row['plan']}, "
            f"out of memory: {row['oom_messages']}")
    planner, replan = results["planner"]["tokens_per_s"], results["replan"]["tokens_per_s"]
    ratio = replan / planner if planner and replan else None
    table = ["| run | tok/s | vs planner | PyTorch peak alloc / reserved GiB | NVML used GiB | plan | out-of-memory messages |",
             "|---|---|---|---|---|---|---|"]
    for name, row in results.items():
        speed = f"{row['tokens_per_s']:,.0f}" if row["tokens_per_s"] else "FAILED"
        versus = f"{row['tokens_per_s'] / planner:.2f}x" if planner and row["tokens_per_s"] else "-"
        peaks = f"{row.get('peak_allocated', math.nan):.2f} / {row.get('peak_reserved', math.nan):.2f}"
        table.append(f"| {name} | {speed} | {versus} | {peaks} | {row['nvml_used_gib']:.2f} | {row['plan']} | "
                     f"{'; '.join(row['oom_messages']) or '-'} |")
    say("\n".join(["", *table, "", f"total {time.perf_counter() - started:.0f}s"]))
    (args.out / "replan_8gb.md").write_text("\n".join(table) + "\n")
    (args.out / "replan_8gb.json").write_text(json.dumps({"cap_gib": args.cap_gib, "ratio": ratio, "runs": results},
                                                         indent=2))
    (args.out / "log.txt").write_text("\n".join(LOG) + "\n")
    ok = all(row["exit"] == 0 for row in results.values()) and bool(results["replan"]["oom_messages"])
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--scenario", choices=("halving", "replan-8gb"), default="halving")
    parser.add_argument("--cap-gib", type=float, default=eight_gb_cap_gib(), help="replan-8gb: PyTorch's allocator cap")
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--tokenizer", type=Path,
                        default=Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "smollm2-tokenizer")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench/oom_real.py needs a CUDA GPU (the CPU tests in tests/training/test_oom.py inject the error).")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    if args.scenario == "replan-8gb":
        return replan_8gb(args)
    big, quarter = args.micro_batch, args.micro_batch // 4
    assert quarter >= 1, "--micro-batch must be at least 4"
    model_dir, data = args.out / "model", args.out / "data.jsonl"
    build_model(model_dir, args.tokenizer)
    write_data(data, count=big * args.steps * 2)
    say(f"device: {torch.cuda.get_device_name(0)}, {torch.cuda.get_device_properties(0).total_memory / GIB:.1f} GiB; "
        f"torch {torch.__version__}; micro-batch {big}, max_length {args.max_length}, {args.steps} steps")
    rows, report = [], {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}

    # calibrate: reserved peak is linear in rows per micro-batch: P(b) = base + b * per_row.
    reference, peak_big = peak_run(run_config(args, model_dir, data, args.out / "uncapped", big, 1))
    _, peak_quarter = peak_run(run_config(args, model_dir, data, args.out / "calibrate-quarter", quarter, 4))
    per_row = (peak_big - peak_quarter) / (big - quarter)
    base = peak_quarter - quarter * per_row
    report["calibration"] = {"peak_reserved_big": peak_big, "peak_reserved_quarter": peak_quarter,
                             "per_row": per_row, "base": base}
    say(f"calibration: peak reserved {peak_big / GIB:.2f} GiB at micro-batch {big}, {peak_quarter / GIB:.2f} GiB at "
        f"{quarter}: {per_row / GIB:.3f} GiB per row on {base / GIB:.2f} GiB")

    # recover: room for 3/8 of B rows (B/4 fits, B/2 does not).
    cap = base + per_row * big * 3 / 8
    recorder = Recorder()
    set_cap(cap)
    started = time.perf_counter()
    try:
        result = loop.train(run_config(args, model_dir, data, args.out / "recover", big, 1), overwrite=True,
                            reporter=recorder)
        manifest = json.loads((result.adapter_dir / "manifest.json").read_text())
        outcome = (f"finished {result.steps} steps, manifest micro_batch_size "
                   f"{manifest['settings']['micro_batch_size']} x accumulation {manifest['settings']['gradient_accumulation_steps']}")
        difference = adapter_difference(result.adapter_dir, reference.adapter_dir)
        ok = result.steps == args.steps
    except Exception as exc:  # reported, not hidden: this is what the GPU run is for
        outcome, difference, ok = f"FAILED: {type(exc).__name__}: {exc}", math.nan, False
        say(traceback.format_exc())
    finally:
        set_cap(None)
    notices = [m for m in recorder.messages if m.startswith("out of memory")]
    rows.append({"scenario": "recover (cap between B/4 and B/2 rows)", "cap_gib": cap / GIB, "oom_notices": notices,
                 "outcome": outcome, "max_abs_diff_vs_uncapped": difference, "ok": ok and len(notices) >= 1,
                 "seconds": time.perf_counter() - started})

    # give up: after step 2, less than micro-batch 1 needs; then resume uncapped.
    run_dir = args.out / "give-up"
    recorder = Recorder(at_step=2, action=lambda: set_cap(base + per_row * 0.25))
    outcome, ok = "", False
    try:
        loop.train(run_config(args, model_dir, data, run_dir, big, 1), overwrite=True, reporter=recorder)
        outcome = "UNEXPECTED: finished under a cap below micro-batch 1"
    except TrainingError as exc:
        checkpoints = [(p.name, verify_checkpoint(p)) for p in list_checkpoints(run_dir)]
        outcome = f"stopped: {exc.message} | hint: {exc.hint} | checkpoints {checkpoints}"
        ok = "micro-batch 1" in exc.message and checkpoints[-1] == ("step-00000002", None)
    except Exception as exc:
        outcome = f"FAILED: {type(exc).__name__}: {exc}"
        say(traceback.format_exc())
    finally:
        set_cap(None)
    say(f"give up: {outcome}")
    resumed = "not attempted"
    if ok:
        try:
            result = loop.train(run_config(args, model_dir, data, run_dir, big, 1), resume=True, reporter=Recorder())
            resumed = f"resumed to step {result.steps}; max |adapter - uncapped| {adapter_difference(result.adapter_dir, reference.adapter_dir):.3g}"
        except Exception as exc:
            resumed, ok = f"resume FAILED: {type(exc).__name__}: {exc}", False
            say(traceback.format_exc())
    rows.append({"scenario": "give up (cap below 1 row after step 2), then resume uncapped",
                 "cap_gib": (base + per_row * 0.25) / GIB,
                 "oom_notices": [m for m in recorder.messages if m.startswith("out of memory")],
                 "outcome": f"{outcome} || {resumed}", "ok": ok})

    report["rows"] = rows
    (args.out / "oom_real.json").write_text(json.dumps(report, indent=2, default=str))
    say("\n| scenario | cap GiB | out-of-memory notices | outcome | ok |\n|---|---|---|---|---|")
    for row in rows:
        say(f"| {row['scenario']} | {row['cap_gib']:.2f} | {len(row['oom_notices'])}: {'; '.join(row['oom_notices'])} | "
            f"{row['outcome']} | {'yes' if row['ok'] else 'NO'} |")
    (args.out / "log.txt").write_text("\n".join(LOG) + "\n")
    return 0 if all(row["ok"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
