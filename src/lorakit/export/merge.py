"""Merge a run's LoRA adapter into its base model and save a plain 16-bit transformers folder.

The base is always loaded unquantized, in the dtype its weights are stored in (so loading loses nothing);
a QLoRA run is therefore merged into the de-quantized base, which is what every merge tool does (the 4-bit
base the adapter was trained against cannot hold the merged weights without re-quantizing them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lorakit.export.finished_run import FinishedRun
from lorakit.export.stop_tokens import end_of_turn_token, stop_token_ids
from lorakit.runtime.logging import get_logger

__all__ = ["MergedModel", "stored_dtype", "export_dtype", "load_base_for_merge", "merge_run", "save_merged"]

log = get_logger("export.merge")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEQUANTIZED_NOTE = ("This run was trained with QLoRA (4-bit base). The adapter was merged into the de-quantized "
                    "base model (16-bit weights), not into the 4-bit weights it was trained against; outputs can "
                    "differ slightly from `lorakit chat` on a GPU that loads the base in 4 bits.")


@dataclass
class MergedModel:
    model: torch.nn.Module
    tokenizer: object
    run: FinishedRun
    dtype: torch.dtype  # the dtype the weights were loaded and merged in
    notes: list[str] = field(default_factory=list)

    @property
    def stop_ids(self) -> list[int]:
        return stop_token_ids(self.tokenizer, self.model.generation_config.eos_token_id)

    @property
    def end_of_turn(self) -> tuple[str, int]:
        return end_of_turn_token(self.tokenizer)


def stored_dtype(model_dir: Path) -> torch.dtype:
    """The dtype config.json says the weights are stored in (float32 when it says nothing)."""
    config = json.loads((model_dir / "config.json").read_text())
    return _DTYPES.get(config.get("dtype") or config.get("torch_dtype") or "float32", torch.float32)


def export_dtype(dtype: torch.dtype) -> torch.dtype:
    """16-bit weights for the merged folder: the stored 16-bit dtype, else bfloat16 (fp16 can overflow)."""
    return dtype if dtype in (torch.bfloat16, torch.float16) else torch.bfloat16


def load_base_for_merge(run: FinishedRun):
    """Tokenizer and unquantized base model on the CPU, in their stored dtype."""
    from lorakit.model.load import load_base_model, load_tokenizer, resolve_model_source

    source = resolve_model_source(run.config.model)
    tokenizer = load_tokenizer(source, run.config.model)
    dtype = stored_dtype(source.directory)
    model = load_base_model(source, run.config.model, torch.device("cpu"), dtype, quantization_config=None)
    return tokenizer, model, dtype


def merge_run(run: FinishedRun, base) -> MergedModel:
    """W + (alpha / r) * B @ A for every adapted layer (peft merge_and_unload); `base` from load_base_for_merge."""
    from peft import PeftModel

    tokenizer, model, dtype = base
    notes = []
    if run.quantized_4bit:
        log.warning("%s", DEQUANTIZED_NOTE)
        notes.append(DEQUANTIZED_NOTE)
    merged = PeftModel.from_pretrained(model, run.adapter_dir).merge_and_unload()
    merged.eval()
    return MergedModel(merged, tokenizer, run, dtype, notes)


def save_merged(merged: MergedModel, folder: Path) -> None:
    """Weights (16-bit safetensors), tokenizer + chat template, and a generation config that stops at the end
    of a turn, so `AutoModelForCausalLM.from_pretrained(folder)` + `generate` needs nothing from lorakit."""
    model = merged.model.to(export_dtype(merged.dtype))
    generation = model.generation_config
    generation.eos_token_id = merged.stop_ids
    generation.pad_token_id = merged.tokenizer.pad_token_id
    model.save_pretrained(folder, safe_serialization=True)
    merged.tokenizer.save_pretrained(folder)
