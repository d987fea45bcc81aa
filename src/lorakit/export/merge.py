"""Merge a run's LoRA adapter into its base model and save a plain transformers folder.

The base is loaded unquantized in float32 and merged there: W + (alpha / r) * B @ A in 16 bits would round the
small LoRA change away before it is stored. The folder is then saved in a dtype that keeps the change
(`save_dtype`): float16 when the weights fit its range (10 mantissa bits), else float32. bfloat16 (7 mantissa
bits) only on request: on the demo run it lost most of the fine-tune (issue 25: 0.731 of the change's norm;
bench/results/export_fidelity.txt). A QLoRA run is merged into the de-quantized base, which is what every merge
tool does (the 4-bit base the adapter was trained against cannot hold the merged weights without re-quantizing).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lorakit.run.source import RunSource
from lorakit.export.generation_settings import template_with_default_system
from lorakit.export.stop_tokens import end_of_turn_token, stop_token_ids
from lorakit.runtime.logging import get_logger

__all__ = ["SAVE_DTYPES", "MergedModel", "stored_dtype", "save_dtype", "load_base_for_merge", "attach_adapter",
           "merge_run", "save_merged"]

log = get_logger("export.merge")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
"""--dtype of a merged export ("auto" picks fp16 or fp32, see save_dtype)."""
BF16_NOTE = ("The merged weights are stored in bfloat16 (--dtype bf16), which rounds away much of the LoRA change "
             "(issue 25: 0.73 of it on the demo run); --dtype auto (fp16 or fp32) keeps it.")
DEQUANTIZED_NOTE = ("This run was trained with QLoRA (4-bit base). The adapter was merged into the de-quantized "
                    "base model (16-bit weights), not into the 4-bit weights it was trained against; outputs can "
                    "differ slightly from `lorakit chat` on a GPU that loads the base in 4 bits.")


@dataclass
class MergedModel:
    model: torch.nn.Module
    tokenizer: object
    run: RunSource
    dtype: torch.dtype  # the dtype the base model's weights are stored in (merged in float32 whatever it is)
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


def save_dtype(model: torch.nn.Module, requested: str) -> tuple[torch.dtype, list[str]]:
    """The dtype to store merged weights in, and a note when it is lossy.

    "auto": float16 when every weight's magnitude fits float16 (max 65504) with room to spare, else float32.
    """
    if requested != "auto":
        return SAVE_DTYPES[requested], [BF16_NOTE] if requested == "bf16" else []
    largest = max(p.detach().abs().max().item() for p in model.state_dict().values() if p.is_floating_point())
    if largest < torch.finfo(torch.float16).max / 2:
        return torch.float16, []
    log.warning("a weight of magnitude %.3g is too large for float16; the merged folder is stored in float32", largest)
    return torch.float32, []


def load_base_for_merge(run: RunSource):
    """Tokenizer and unquantized base model on the CPU in float32 (the merge happens there), and the dtype its
    weights are stored in."""
    from lorakit.model.load import load_base_model, load_tokenizer, resolve_model_source

    source = resolve_model_source(run.config.model)
    tokenizer = load_tokenizer(source, run.config.model)
    model = load_base_model(source, run.config.model, torch.device("cpu"), torch.float32, quantization_config=None)
    return tokenizer, model, stored_dtype(source.directory)


def attach_adapter(run: RunSource, base):
    """The run's adapter on the base model (peft, unmerged): the model `lorakit chat` runs."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base[1], run.adapter_dir).eval()


def merge_run(run: RunSource, base, adapted=None) -> MergedModel:
    """W + (alpha / r) * B @ A for every adapted layer (peft merge_and_unload); `base` from load_base_for_merge,
    `adapted` from attach_adapter (attached here when None)."""
    tokenizer, model, dtype = base
    notes = []
    if run.quantized_4bit:
        log.warning("%s", DEQUANTIZED_NOTE)
        notes.append(DEQUANTIZED_NOTE)
    merged = (adapted if adapted is not None else attach_adapter(run, base)).merge_and_unload()
    merged.eval()
    return MergedModel(merged, tokenizer, run, dtype, notes)


def save_merged(merged: MergedModel, folder: Path, dtype: torch.dtype) -> None:
    """Weights (safetensors in `dtype`), tokenizer + chat template, and a generation config that stops at the end
    of a turn, so `AutoModelForCausalLM.from_pretrained(folder)` + `generate` needs nothing from lorakit.
    The in-memory model is converted to `dtype` too."""
    model = merged.model.to(dtype)
    generation = model.generation_config
    generation.eos_token_id = merged.stop_ids
    generation.pad_token_id = merged.tokenizer.pad_token_id
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer, template = merged.tokenizer, merged.tokenizer.chat_template
    tokenizer.chat_template = template_with_default_system(template, merged.run.system_prompt)
    try:
        tokenizer.save_pretrained(folder)
    finally:
        tokenizer.chat_template = template
