"""The Phi-4-mini-shaped model with random weights that the speed benchmarks train (and a tiny one for --smoke),
and the synthetic-chat run config they share (bench/multi_gpu.py, bench/fsdp.py, bench/peer_speed.py)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from lib.synthetic_chat import synthetic_conversations

REPO = Path(__file__).resolve().parents[2]
PHI4_MINI = dict(vocab_size=200064, hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
                 num_attention_heads=24, num_key_value_heads=8, partial_rotary_factor=0.75, tie_word_embeddings=True,
                 max_position_embeddings=131072, rms_norm_eps=1e-5, hidden_act="silu", resid_pdrop=0.0,
                 embd_pdrop=0.0, attention_dropout=0.0, bos_token_id=1, eos_token_id=2, pad_token_id=2)
SMOKE = dict(PHI4_MINI, vocab_size=49152, num_hidden_layers=2, hidden_size=64, intermediate_size=128,
             num_attention_heads=4, num_key_value_heads=2)
TOKENIZER = REPO / "tests" / "fixtures" / "smollm2-tokenizer"


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


def save_random_phi3(folder, tokenizer, smoke: bool) -> None:
    """The benchmark's model: a Phi-4-mini-shaped Phi3 (SMOKE's tiny shape with `smoke`) with random weights (seed 0),
    bf16, saved with `tokenizer` to `folder`; built on the GPU when there is one (the smoke model on the CPU)."""
    import torch
    from transformers import AutoModelForCausalLM, Phi3Config

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() and not smoke else "cpu"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(Phi3Config(**(SMOKE if smoke else PHI4_MINI)), dtype=torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
