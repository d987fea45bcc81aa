"""Issue 9, point 8: the memory planner on model shapes it was NOT fitted on.

    python bench/planner_holdout.py --out DIR [--smoke] [--steps 2]

The planner's constants were fitted on a Phi-4-mini-shaped model (bench/gpu_speed_memory.py). This script
trains two other architectures/sizes with random weights, each through the public command
`lorakit train CONFIG --set ...` (one fresh process per row), and compares the measured peak with the
planner's prediction for the same settings:

  smollm2-1.7b  LlamaConfig hidden 2048, intermediate 8192, 24 layers, 32 heads, 32 kv heads, vocab 49152, tied
  llama3.2-3b   LlamaConfig hidden 3072, intermediate 8192, 28 layers, 24 heads,  8 kv heads, vocab 128256, tied

for QLoRA (nf4) and bf16 LoRA, at several micro-batch x max_length x checkpointing settings (packing on, every
example longer than max_length, so each packed micro-batch holds exactly micro-batch x max_length tokens).

Measured: torch.cuda.max_memory_allocated() of the whole `lorakit train` process (read at exit; what the
planner's `peak_allocated` predicts) and the GPU's used memory polled through NVML (what nvidia-smi shows;
compared with the fit check's `peak_on_gpu` = peak x (1 + allocator slack) + CUDA context).

Every row records the settings the prediction needs, so tests/plan/test_memory.py recomputes each
prediction with today's planner from DIR/rows.jsonl. Writes DIR/rows.jsonl, DIR/table.md, DIR/env.json.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = REPO / "tests" / "fixtures" / "smollm2-tokenizer"
GIB = 1024**3

SHAPES = {
    "smollm2-1.7b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
                         num_key_value_heads=32, vocab_size=49152, tie_word_embeddings=True),
    "llama3.2-3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
                        num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
}
SMOKE_SHAPES = {"tiny-llama": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=49152, tie_word_embeddings=True)}
# (micro-batch, max_length, gradient checkpointing)
SETTINGS = [(4, 512, False), (2, 2048, True), (8, 1024, False)]
QUANTIZATIONS = ["nf4", "none"]
LORA = {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"}  # lorakit's defaults


def build_model(directory: Path, shape: dict, device: str) -> None:
    """A random-weight Llama model of `shape` in bf16, with the fixture tokenizer (ids < 49152 fit every vocab)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    config = LlamaConfig(**shape, max_position_embeddings=8192, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()


def write_data(path: Path, count: int) -> None:
    """Single-turn chats whose answers (~2,500 tokens) exceed every max_length here: packed rows are full."""
    sys.path.insert(0, str(REPO / "bench"))
    from lib.synthetic_chat import synthetic_conversations

    rows = []
    for conversation in synthetic_conversations(count, seed=3, answer_median_words=2000, sigma=0.05,
                                                min_answer_words=1800):
        question, answer = (m.content for m in conversation.messages)
        rows.append(json.dumps({"instruction": question, "response": answer}))
    path.write_text("\n".join(rows) + "\n")


def write_config(path: Path, model_dir: Path, data: Path, steps: int) -> None:
    import yaml

    path.write_text(yaml.safe_dump({
        "seed": 5, "mode": "train",
        "model": {"name": str(model_dir)},
        "lora": LORA,
        "training": {"max_steps": steps, "gradient_accumulation_steps": 1, "packing": True, "precision": "auto",
                     "logging_steps": 1, "eval_steps": 1000, "save_steps": 1000, "warmup_steps": 0},
        "data": {"train_file": str(data), "validation_split": 0.0, "test_split": 0.0, "allow_phi": True},
    }, sort_keys=False))


def predicted(row: dict) -> dict:
    """Today's planner on the row's recorded settings (the same function the test calls)."""
    sys.path.insert(0, str(REPO / "src"))
    from lorakit.plan.memory import ModelShape, TrainSettings, estimate_peak_memory

    settings = TrainSettings(
        quantization=row["quantization"], dtype_bytes=row["dtype_bytes"], lora_rank=row["lora_r"],
        lora_targets=row["lora_targets"], lora_dropout=row["lora_dropout"] > 0,
        tokens_per_micro_batch=row["micro_batch"] * row["max_length"],
        checkpointed_layers=row["model_config"]["num_hidden_layers"] if row["gradient_checkpointing"] else 0,
        offload_activations=False,
        fused_kernels=row["fused_kernels"], kv_expanded=row["kv_expanded"], mask_bytes=1)
    estimate = estimate_peak_memory(ModelShape.from_config(dict(row["model_config"], model_type="llama")), settings)
    return {"predicted": estimate.peak_allocated, "predicted_on_gpu": estimate.peak_on_gpu()}


class GpuMemoryPoller:
    """The GPU's used memory (NVML, what nvidia-smi reports), polled every 50 ms; max over the run."""

    def __init__(self):
        import pynvml

        pynvml.nvmlInit()
        self.nvml, self.handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
        self.peak, self.stop = 0, threading.Event()

    def used(self) -> int:
        return self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used

    def __enter__(self):
        self.baseline = self.used()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        return self

    def _poll(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.used())
            time.sleep(0.05)

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def run_row(args, name: str, shape: dict, model_dir: Path, config_path: Path, quantization: str, micro_batch: int,
            max_length: int, checkpointing: bool) -> dict:
    peak_file = args.work / f"peak-{name}-{quantization}-{micro_batch}x{max_length}-{int(checkpointing)}.json"
    command = [sys.executable, __file__, "--child", str(peak_file), "train", str(config_path), "--overwrite",
               "--set", f"output_dir={args.work / 'runs' / peak_file.stem}",
               "--set", f"model.quantization={quantization}", "--set", f"model.max_length={max_length}",
               "--set", f"training.batch_size={micro_batch}",
               "--set", f"training.gradient_checkpointing={str(checkpointing).lower()}"]
    row = {"shape": name, "quantization": quantization, "micro_batch": micro_batch, "max_length": max_length,
           "gradient_checkpointing": checkpointing, "model_config": shape, "lora_r": LORA["r"],
           "lora_dropout": LORA["dropout"], "lora_targets": LORA["target_modules"], "steps": args.steps,
           "command": "lorakit " + " ".join(command[4:])}
    started = time.perf_counter()
    poller = GpuMemoryPoller() if not args.smoke else None
    if poller:
        poller.__enter__()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.row_timeout)
        row["exit"], tail = done.returncode, (done.stdout + done.stderr)[-4000:]
    except subprocess.TimeoutExpired:
        row["exit"], tail = "timeout", ""
    finally:
        if poller:
            poller.__exit__()
    row["seconds"] = time.perf_counter() - started
    if poller:
        row["nvml_used_peak"], row["nvml_used_before"] = poller.peak, poller.baseline
    if peak_file.is_file():
        row.update(json.loads(peak_file.read_text()))
    # lorakit's own report of the model (4-bit weights must be counted unpacked)
    row["model_line"] = next((line.strip() for line in tail.splitlines() if " parameters, " in line), None)
    if row["exit"] != 0 or "peak_allocated" not in row:
        row["error"] = tail
        return row
    row.update(predicted(row))
    return row


def child(peak_file: Path, argv: list[str]) -> None:
    """Run `lorakit ARGV` in this process and write its CUDA peak (and the settings it ran with) at exit."""
    import torch

    from lorakit.cli.app import main
    from lorakit.model.attention import expands_kv_heads
    from lorakit.model.kernels import liger_available

    def record():
        cuda = torch.cuda.is_available()
        peak_file.write_text(json.dumps({
            "peak_allocated": torch.cuda.max_memory_allocated() if cuda else 0,
            "peak_reserved": torch.cuda.max_memory_reserved() if cuda else 0,
            "dtype_bytes": 2 if cuda else 4, "fused_kernels": cuda and liger_available(),
            "kv_expanded": expands_kv_heads(),
        }))

    atexit.register(record)
    sys.argv = ["lorakit", *argv]
    main()


def print_table(rows: list[dict], out: Path) -> None:
    header = ("| shape | quant | micro-batch x length | ckpt | predicted GiB | measured GiB (max_memory_allocated) | error | "
              "fit check GiB (peak_on_gpu) | NVML used GiB (nvidia-smi) | fit check covers NVML | s |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['shape']} | {r['quantization']} | {r['micro_batch']} x {r['max_length']} | "
                         f"{r['gradient_checkpointing']} | failed: exit {r['exit']} |" + " |" * 6)
            continue
        error = (r["predicted"] - r["peak_allocated"]) / max(r["peak_allocated"], 1)
        nvml = (r.get("nvml_used_peak", 0) - r.get("nvml_used_before", 0)) / GIB
        lines.append(f"| {r['shape']} | {r['quantization']} | {r['micro_batch']} x {r['max_length']} | "
                     f"{r['gradient_checkpointing']} | {r['predicted'] / GIB:.2f} | {r['peak_allocated'] / GIB:.2f} | "
                     f"{error:+.1%} | {r['predicted_on_gpu'] / GIB:.2f} | {nvml:.2f} | "
                     f"{'yes' if r['predicted_on_gpu'] >= nvml * GIB else 'NO'} | {r['seconds']:.0f} |")
    errors = [abs(r["predicted"] - r["peak_allocated"]) / max(r["peak_allocated"], 1) for r in rows if "error" not in r]
    if errors:
        lines.append(f"\nheld-out rows: {len(errors)}; mean |error| {sum(errors) / len(errors):.1%}, "
                     f"max |error| {max(errors):.1%}")
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    print(table, flush=True)


def main() -> None:
    # allow_abbrev off: the child passes `--set` through to lorakit, which argparse would read as `--settings`.
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--work", type=Path, default=Path("/tmp/planner_holdout"))
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--row-timeout", type=int, default=150)
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU: checks the script runs")
    parser.add_argument("--child", type=Path, help="internal: run lorakit in this process, record its peak")
    parser.add_argument("--settings", nargs="*", help="only these rows, as MICROxLENGTHxCKPT (e.g. 2x2048x1)")
    parser.add_argument("--table-only", action="store_true", help="print the table of OUT/rows.jsonl again")
    args, rest = parser.parse_known_args()
    if args.child:
        child(args.child, rest)
        return
    if args.table_only:
        print_table([json.loads(line) for line in (args.out / "rows.jsonl").read_text().splitlines()], args.out)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    import torch

    device = "cpu" if args.smoke else "cuda"
    environment = {"torch": torch.__version__, "smoke": args.smoke, "steps": args.steps}
    if not args.smoke:
        import bitsandbytes
        import liger_kernel  # noqa: F401  (fail now: lorakit would silently train without them)
        import peft
        import transformers

        environment.update(device=torch.cuda.get_device_name(), cuda=torch.version.cuda,
                           transformers=transformers.__version__, peft=peft.__version__,
                           bitsandbytes=bitsandbytes.__version__)
    (args.out / "env.json").write_text(json.dumps(environment, indent=2))
    print("ENV", json.dumps(environment), flush=True)
    data = args.work / "long_chats.jsonl"
    write_data(data, 64)
    shapes = SMOKE_SHAPES if args.smoke else SHAPES
    for name, shape in shapes.items():
        started = time.perf_counter()
        build_model(args.work / name, shape, device)
        write_config(args.work / f"{name}.yaml", args.work / name, data, args.steps)
        print(f"{name}: random model saved in {time.perf_counter() - started:.0f}s", flush=True)
    rows = []
    # Setting by setting across shapes and quantizations, so a run cut short still covers both shapes.
    settings = [(2, 256, False), (2, 256, True)] if args.smoke else SETTINGS
    if args.settings:
        settings = [(int(m), int(n), bool(int(c))) for m, n, c in (text.split("x") for text in args.settings)]
    for micro_batch, max_length, checkpointing in settings:
        for name, shape in shapes.items():
            for quantization in ["none"] if args.smoke else QUANTIZATIONS:
                row = run_row(args, name, shape, args.work / name, args.work / f"{name}.yaml", quantization,
                              micro_batch, max_length, checkpointing)
                rows.append(row)
                with open(args.out / "rows.jsonl", "a") as handle:
                    handle.write(json.dumps(row) + "\n")
                print("ROW", json.dumps({k: v for k, v in row.items() if k not in ("model_config", "error")}), flush=True)
                if "error" in row:
                    print(row["error"], flush=True)
    print_table(rows, args.out)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
