"""A finished run on the embedded SmolLM2 without training it: an adapter with small random, non-zero B
weights, saved with the config and manifest a real run writes (training the real model on CPU takes minutes)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lorakit.config import EMBEDDED_MODEL_ALIAS, RunConfig, dump_config
from lorakit.run.manifest import build_manifest

_MADE: dict[Path, Path] = {}


def embedded_adapter_run(workspace: Path) -> Path:
    """RUN_DIR with final/ (adapter, tokenizer, config.yaml, manifest.json); made once per session."""
    if workspace in _MADE:
        return _MADE[workspace]
    from peft import LoraConfig, get_peft_model

    from lorakit.model.load import load_base_model, load_tokenizer, resolve_model_source

    config = RunConfig.model_validate({"output_dir": str(workspace / "run"), "model": {"name": EMBEDDED_MODEL_ALIAS},
                                       "lora": {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]}, "data": {"train_file": "qa.jsonl"}})
    source = resolve_model_source(config.model)
    tokenizer = load_tokenizer(source, config.model)
    model = load_base_model(source, config.model, torch.device("cpu"), torch.float32)
    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False))
    with torch.no_grad():  # peft's random B is as large as A; scale it to what a short fine-tune produces
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.mul_(0.02)
    final = workspace / "run" / "final"
    peft_model.save_pretrained(final, safe_serialization=True)
    tokenizer.save_pretrained(final)
    (final / "config.yaml").write_text(dump_config(config))
    manifest = build_manifest(
        identity={"model_id": EMBEDDED_MODEL_ALIAS, "model_revision": None}, seed=config.seed,
        split_sizes={"train": 10, "validation": 1, "test": 1}, data={"sha256": "0" * 64, "truncated": 0},
        metrics={"steps": 0}, settings={"quantized_4bit": False, "dtype": "float32", "device": "cpu"})
    (final / "manifest.json").write_text(json.dumps(manifest))
    _MADE[workspace] = workspace / "run"
    return _MADE[workspace]
