"""Issue 2, point 7 on a real GPU: a run directory trained on CUDA loads and answers on CUDA and on CPU.

    python bench/run_dir_devices.py --out DIR [--tokenizer FIXTURE_DIR]

Builds a tiny random Llama model with the fixture tokenizer, trains 3 steps with `lorakit train` on the GPU,
then runs `lorakit chat RUN --question` twice: on the GPU, and with CUDA hidden (CPU). Prints a table and
writes DIR/run_dir_devices.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]


def build_tiny_model(directory: Path, tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, eos_token_id=2,
                         initializer_range=0.2)
    LlamaForCausalLM(config).save_pretrained(directory)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(directory)


def lorakit(args: list[str], env: dict) -> tuple[int, str, float]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "lorakit", *args], cwd=REPO, env=env, capture_output=True, text=True)
    return done.returncode, (done.stdout + done.stderr)[-1500:], time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tokenizer", type=Path, default=REPO / "tests" / "fixtures" / "smollm2-tokenizer")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lorakit-devices-"))
    work.mkdir(parents=True, exist_ok=True)
    build_tiny_model(work / "model", args.tokenizer)
    config = yaml.safe_load((REPO / "examples" / "config.yaml").read_text())
    config.update(output_dir=str(work / "run"), mode="train")
    config["model"] = {"name": str(work / "model"), "max_length": 256}
    config["training"].update(max_steps=3, warmup_steps=0, eval_steps=3, save_steps=3, logging_steps=1, batch_size=4)
    config["data"]["train_file"] = str(REPO / "examples" / "medical_qa.jsonl")
    config["inference"].update(max_new_tokens=8)
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    gpu_env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cpu_env = {**gpu_env, "CUDA_VISIBLE_DEVICES": ""}
    rows = []
    for label, argv, env in [
        ("train on GPU", ["train", str(work / "config.yaml")], gpu_env),
        ("chat on GPU", ["chat", str(work / "run"), "--question", "What is insulin?"], gpu_env),
        ("chat on CPU", ["chat", str(work / "run"), "--question", "What is insulin?"], cpu_env),
    ]:
        code, tail, seconds = lorakit(argv, env)
        rows.append({"step": label, "exit": code, "seconds": round(seconds, 1), "tail": tail})
    manifest = json.loads((work / "run" / "final" / "manifest.json").read_text())
    print(f"device: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
    print(f"trained on: {manifest['settings']['device']} ({manifest['settings']['dtype']})")
    print("| step | exit | seconds |\n|---|---|---|")
    for row in rows:
        print(f"| {row['step']} | {row['exit']} | {row['seconds']} |")
    for row in rows:
        print(f"--- {row['step']} ---\n{row['tail']}")
    (args.out / "run_dir_devices.json").write_text(json.dumps({"rows": rows, "settings": manifest["settings"]}, indent=1))


if __name__ == "__main__":
    main()
