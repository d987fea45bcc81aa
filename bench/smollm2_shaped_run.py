"""A SmolLM2-135M-shaped run with random weights, for GPU benches on a machine that cannot install the embedded
model's package: the architecture and tokenizer (tests/fixtures) of SmolLM2-135M-Instruct, one `lorakit train`
step on the bundled data through the CLI.

    python bench/smollm2_shaped_run.py /tmp/run     # then e.g. bench/generation_speed.py --run /tmp/run
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def build_model(directory: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                         rope_theta=100000.0, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory, safe_serialization=True)
    AutoTokenizer.from_pretrained(REPO / "tests" / "fixtures" / "smollm2-tokenizer").save_pretrained(directory)
    return directory


def train_one_step(model: Path, run_dir: Path) -> Path:
    """A finished run of `model` (LoRA after one `lorakit train` step on the bundled data), as serve and chat read it."""
    subprocess.run([sys.executable, "-m", "lorakit", "train", str(REPO / "examples" / "config.yaml"), "--overwrite",
                    "--set", f"model.name={model}", "--set", f"output_dir={run_dir}", "--set", "mode=train",
                    "--set", "training.max_steps=1", "--set", "training.warmup_steps=0",
                    "--set", "training.early_stopping_patience=null"],
                   check=True, cwd=REPO)
    return run_dir


def main() -> None:
    run_dir = Path(sys.argv[1])
    train_one_step(build_model(run_dir.parent / f"{run_dir.name}-model"), run_dir)


if __name__ == "__main__":
    main()
