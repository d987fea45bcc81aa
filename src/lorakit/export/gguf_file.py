"""Write a merged model as one .gguf file (weights, tokenizer, chat template, stop tokens, system prompt).

The header (metadata and every tensor's name, shape and type) is written first; then tensors are converted,
encoded and appended one at a time, so memory holds the merged model plus one tensor, not a second copy.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from lorakit.export.gguf_metadata import add_model_metadata, add_run_metadata, add_tokenizer_metadata
from lorakit.export.gguf_tensors import (
    ARCHITECTURES,
    QUANT_TYPES,
    encode_tensor,
    encoded_nbytes,
    gguf_tensors,
    tensor_type,
)
from lorakit.export.merge import MergedModel
from lorakit.export.steps import ExportSteps

__all__ = ["GGUF_QUANTS", "write_gguf"]

GGUF_QUANTS = tuple(QUANT_TYPES)
_NUMPY_TYPES = {gguf.GGMLQuantizationType.F32: np.float32, gguf.GGMLQuantizationType.F16: np.float16}


def _add_tensor_info(writer: gguf.GGUFWriter, tensor, quant: str) -> None:
    kind = tensor_type(tensor, quant)
    if kind in _NUMPY_TYPES:
        writer.add_tensor_info(tensor.name, tensor.shape, np.dtype(_NUMPY_TYPES[kind]), encoded_nbytes(tensor, kind))
    else:
        byte_shape = gguf.quants.quant_shape_to_byte_shape(tensor.shape, kind)
        writer.add_tensor_info(tensor.name, byte_shape, np.dtype(np.uint8), encoded_nbytes(tensor, kind), raw_dtype=kind)


def write_gguf(merged: MergedModel, path: Path, quant: str, steps: ExportSteps) -> Path:
    """Convert (names, layouts), quantize and write `path`; each stage fails as its own named step."""
    config = merged.model.config
    with steps.step("convert", f"GGUF metadata and tensor layout for a {config.model_type} model"):
        if config.model_type not in ARCHITECTURES:
            raise ValueError(f"GGUF export supports {', '.join(ARCHITECTURES)} models, not {config.model_type}")
        writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[ARCHITECTURES[config.model_type]])
        add_model_metadata(writer, config, quant, path.stem)
        add_tokenizer_metadata(writer, merged)
        add_run_metadata(writer, merged)
        tensors = list(gguf_tensors(merged.model))
        for tensor in tensors:
            _add_tensor_info(writer, tensor, quant)
    with steps.step("write", f"{path.name}: header"):
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
    with steps.step("quantize", f"{len(tensors)} tensors to {quant}, streamed into {path.name}"):
        for tensor in tensors:
            with steps.step("convert", tensor.name, quiet=True):
                data = tensor.load()
            with steps.step("quantize", tensor.name, quiet=True):
                encoded = encode_tensor(tensor, data, quant)
            with steps.step("write", tensor.name, quiet=True):
                writer.write_tensor_data(encoded)
    with steps.step("write", f"{path.name}: close"):
        writer.close()
    return path
