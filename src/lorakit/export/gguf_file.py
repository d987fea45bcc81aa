"""Write a merged model as one .gguf file (weights, tokenizer, chat template, stop tokens, system prompt)."""

from __future__ import annotations

from pathlib import Path

import gguf

from lorakit.export.gguf_metadata import add_model_metadata, add_run_metadata, add_tokenizer_metadata
from lorakit.export.gguf_tensors import ARCHITECTURES, QUANT_TYPES, encode_tensor, gguf_tensors
from lorakit.export.merge import MergedModel
from lorakit.export.steps import ExportSteps

__all__ = ["GGUF_QUANTS", "gguf_file_name", "write_gguf"]

GGUF_QUANTS = tuple(QUANT_TYPES)


def gguf_file_name(merged_name: str, quant: str) -> str:
    return f"{merged_name}-{quant}.gguf"


def write_gguf(merged: MergedModel, path: Path, quant: str, steps: ExportSteps) -> Path:
    """Convert (names, layouts), quantize, then write `path`; each stage fails as its own named step."""
    config = merged.model.config
    with steps.step("convert", f"GGUF metadata for a {config.model_type} model"):
        if config.model_type not in ARCHITECTURES:
            raise ValueError(f"GGUF export supports {', '.join(ARCHITECTURES)} models, not {config.model_type}")
        writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[ARCHITECTURES[config.model_type]])
        add_model_metadata(writer, config, quant, path.stem)
        add_tokenizer_metadata(writer, merged)
        add_run_metadata(writer, merged)
        tensors = list(gguf_tensors(merged.model))
    with steps.step("quantize", f"{len(tensors)} tensors to {quant}"):
        for tensor in tensors:
            data, kind = encode_tensor(tensor, quant)
            writer.add_tensor(tensor.name, data, raw_dtype=None if kind in (gguf.GGMLQuantizationType.F32,
                                                                            gguf.GGMLQuantizationType.F16) else kind)
    with steps.step("write", path.name):
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path
