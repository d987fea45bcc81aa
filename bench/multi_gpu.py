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
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from lib.step_speed import run_speed  # noqa: E402
from lib.synthetic_chat import synthetic_conversations  # noqa: E402

PHI4_MINI = dict(vocab_size=200064, hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
                 num_attention_heads=24, num_key_value_heads=8, partial_rotary_factor=0.75, tie_word_embeddings=True,
                 max_position_embeddings=131072, rms_norm_eps=1e-5, hidden_act="silu", resid_pdrop=0.0,
                 embd_pdrop=0.0, attention_dropout=0.0, bos_token_id=1, eos_token_id=2, pad_token_id=2)
SMOKE = dict(PHI4_MINI, vocab_size=49152, num_hidden_layers=2, hidden_size=64, intermediate_size=128,
             num_attention_heads=4, num_key_value_heads=2)
TOKENIZER = REPO / "tests" / "fixtures" / "smollm2-tokenizer"
# Keep NVLink multicast off (a shared host's GPUs can be put out of service by it).
SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def build_model(directory: Path, shape: dict) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, Phi3Config

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(Phi3Config(**shape), dtype=torch.bfloat16)
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(TOKENIZER).save_pretrained(directory)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def write_config(root: Path, model_dir: Path, *, smoke: bool, steps: int) -> Path:
    """Synthetic Q&A that fits max_length 512 (system prompt and template included), and the run config."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    data = root / "synthetic.jsonl"
    with open(data, "w") as handle:
        for conversation in synthetic_conversations(512 if smoke else 6000, seed=0):
            user, assistant = (m.content for m in conversation.messages)
            if len(tokenizer(user + " " + assistant)["input_ids"]) <= 512 - 128:  # room for system prompt + template
                handle.write(json.dumps({"instruction": user, "response": assistant}) + "\n")
    config = {
        "seed": 0,
        "output_dir": str(root / "run"),
        "model": {"name": str(model_dir), "max_length": 512},
        "training": {"precision": "fp32" if smoke else "bf16", "packing": True, "batch_size": 2 if smoke else 16,
                     "gradient_checkpointing": False, "gradient_accumulation_steps": 4, "max_steps": steps,
                     "logging_steps": 1, "eval_steps": steps, "save_steps": steps, "lr_scheduler": "constant",
                     "learning_rate": 1e-4},
        "data": {"train_file": str(data), "validation_split": 0.0, "test_split": 0.0},
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class GpuMemorySampler:
    """Highest nvidia-smi memory.used (MiB) per GPU index while running; empty without nvidia-smi."""

    def __init__(self):
        self.peak: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=index,memory.used", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=10).stdout
            except (OSError, subprocess.TimeoutExpired):
                return
            for line in out.strip().splitlines():
                index, used = (int(x) for x in line.split(","))
                self.peak[index] = max(self.peak.get(index, 0), used)
            time.sleep(0.25)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def launch_row(root: Path, name: str, gpus: int, entry: list[str], lorakit_args: list[str], log,
               timeout: int | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    """`torchrun --nproc-per-node GPUS ENTRY LORAKIT_ARGS` on the first GPUS GPUs, logged; returns the finished
    process and the row's common fields (wall time, nvidia-smi peak per GPU). A timeout is exit code 124."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(gpus),
               *entry, *lorakit_args]
    env = dict(os.environ, **SAFE_ENV, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1",
               LORAKIT_CACHE_DIR=str(root / "cache"))
    if torch.cuda.is_available():
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(gpus))
    started = time.perf_counter()
    with GpuMemorySampler() as sampler:
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            stdout, stderr = process.communicate(timeout=timeout)
            done = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
        except subprocess.TimeoutExpired:
            # SIGTERM: torchrun stops its workers (they run in sessions of their own, so no signal to torchrun's
            # process group reaches them); they would otherwise hold the GPUs into the next row.
            process.terminate()
            stdout, stderr = process.communicate()
            done = subprocess.CompletedProcess(command, 124, stdout, stderr + "\nerror: timed out")
    log.write(f"== {name}: {' '.join(command)}\n{done.stdout}\n{done.stderr[-6000:]}\n")
    log.flush()
    return done, {"row": name, "gpus": gpus, "wall_seconds": time.perf_counter() - started,
                  "peak_mib_per_gpu": [sampler.peak.get(i) for i in range(gpus)]}


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
