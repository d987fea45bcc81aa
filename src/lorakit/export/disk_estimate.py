"""How many bytes an export will write, from the base model's parameter count (read from safetensors
headers, without loading any weights) times the bytes per parameter of the format."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from lorakit.run.source import RunSource

__all__ = ["BYTES_PER_PARAMETER", "parameter_count", "estimated_export_bytes"]

# GGUF block formats: q8_0 stores 32 weights in 34 bytes, q4_0 in 18 (plus a float16 scale each).
BYTES_PER_PARAMETER = {"merged": 2.0, "merged-fp32": 4.0, "f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
_MARGIN = 1.1  # tokenizer, metadata, and estimates that run short
_SLACK_BYTES = 32 * 2**20


def parameter_count(model_dir: Path) -> int:
    """Sum of tensor sizes over the folder's *.safetensors headers (8-byte length, then JSON)."""
    total = 0
    for path in sorted(model_dir.glob("*.safetensors")):
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        total += sum(math.prod(entry["shape"]) for key, entry in header.items() if key != "__metadata__")
    return total


def estimated_export_bytes(run: RunSource, format: str, quant: str, dtype: str = "auto") -> int:
    """`dtype` "auto" counts 16 bits (it picks fp32 only for weights beyond float16's range)."""
    if format == "adapter":
        size = sum(p.stat().st_size for p in run.adapter_dir.iterdir() if p.is_file())
        return int(size * _MARGIN) + _SLACK_BYTES
    from lorakit.model.load import resolve_model_source

    parameters = parameter_count(resolve_model_source(run.config.model).directory)
    merged = "merged-fp32" if dtype == "fp32" else "merged"
    per_parameter = BYTES_PER_PARAMETER[merged if format == "merged" else quant]
    return int(parameters * per_parameter * _MARGIN) + _SLACK_BYTES
