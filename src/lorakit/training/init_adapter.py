"""Start training from a finished run's adapter (training.init_adapter), e.g. DPO refining an SFT run.

The adapter's shape must be the one this run attaches (r, alpha, target modules, DoRA/rsLoRA): its weights are
copied into the fresh LoRA layers, so every later step, checkpoint and resume works as for a fresh adapter. For
DPO the starting adapter is also frozen as the reference (training/preference_loss.py): the run is pulled
toward the chosen answers relative to where it started, as TRL's DPOTrainer does with a trained adapter.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from lorakit.config import LoraSettings
from lorakit.errors import ConfigError
from lorakit.run.layout import ADAPTER_CONFIG as _CONFIG
from lorakit.run.layout import ADAPTER_WEIGHTS as _WEIGHTS
from lorakit.run.layout import FINAL

__all__ = ["resolve_init_adapter", "load_init_adapter"]


def resolve_init_adapter(path: str | Path) -> Path:
    """The adapter folder named by training.init_adapter: the folder itself, or a run folder's final/."""
    location = Path(path)
    for candidate in (location, location / FINAL):
        if (candidate / _WEIGHTS).is_file() and (candidate / _CONFIG).is_file():
            return candidate
    raise ConfigError("training.init_adapter", [
        f"{path}: no adapter found (neither it nor its final/ folder holds {_WEIGHTS} and {_CONFIG}); name a finished "
        "run folder or its final/ folder"])


def _mismatches(saved: dict, lora: LoraSettings, targets: list[str]) -> list[str]:
    wanted = {"r": lora.r, "lora_alpha": float(lora.alpha), "target_modules": sorted(targets),
              "use_dora": lora.use_dora, "use_rslora": lora.use_rslora}
    found = {"r": saved.get("r"), "lora_alpha": float(saved.get("lora_alpha", 0)),
             "target_modules": sorted(saved.get("target_modules") or []),
             "use_dora": bool(saved.get("use_dora")), "use_rslora": bool(saved.get("use_rslora"))}
    return [f"{key}: the adapter has {found[key]}, this run's lora settings give {wanted[key]}"
            for key in wanted if found[key] != wanted[key]]


def load_init_adapter(model, path: str | Path, lora: LoraSettings, targets: list[str]) -> str:
    """Copy the adapter's weights into `model`'s LoRA layers; returns their sha256 (for the run's identity, so
    a resume refuses a starting adapter that changed). A shape that does not match is a ConfigError."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load as load_safetensors

    folder = resolve_init_adapter(path)
    problems = _mismatches(json.loads((folder / _CONFIG).read_text(encoding="utf-8")), lora, targets)
    if problems:
        raise ConfigError("training.init_adapter", [f"{folder} does not fit this run's LoRA layers:", *problems,
                                                    "Set lora to the starting run's settings."])
    data = (folder / _WEIGHTS).read_bytes()
    unexpected = set_peft_model_state_dict(model, load_safetensors(data)).unexpected_keys
    if unexpected:
        raise ConfigError("training.init_adapter", [
            f"{folder}: {len(unexpected)} tensors match no LoRA layer of this model (e.g. {unexpected[0]}); is it "
            "an adapter of another model?"])
    return hashlib.sha256(data).hexdigest()
