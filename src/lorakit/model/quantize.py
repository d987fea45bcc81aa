"""QuantConfig -> bitsandbytes 4-bit (QLoRA) settings, or None for full-precision LoRA."""

from __future__ import annotations

import importlib.util

import torch

from lorakit.errors import ConfigError

__all__ = ["bitsandbytes_available", "wants_4bit", "nf4_config"]


def bitsandbytes_available() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def wants_4bit(quantization: str, device: torch.device) -> bool:
    """'auto' quantizes to nf4 on CUDA when bitsandbytes is installed; explicit 'nf4' demands both."""
    if quantization == "none":
        return False
    usable = device.type == "cuda" and bitsandbytes_available()
    if quantization == "nf4" and not usable:
        need = "a CUDA GPU" if device.type != "cuda" else "the bitsandbytes package (pip install 'lorakit[gpu]')"
        raise ConfigError("model.quantization", [f"model.quantization: 'nf4' needs {need}; set it to 'none' or 'auto'"])
    return usable


def nf4_config(compute_dtype: torch.dtype):
    """QLoRA's recipe: nf4 storage, double quantization, matmuls in the training dtype."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )
