"""Pick the device and the training/inference dtype from the hardware and the config."""

from __future__ import annotations

import torch

from lorakit.errors import ConfigError

__all__ = ["pick_device", "compute_dtype"]


def pick_device() -> torch.device:
    """CUDA when present, else CPU (Apple MPS is not a supported training target yet)."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def compute_dtype(precision: str, device: torch.device) -> torch.dtype:
    """'auto' -> bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU."""
    if precision == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision in ("bf16", "fp16") and device.type != "cuda":
        raise ConfigError("training.precision", [f"training.precision: '{precision}' needs a CUDA GPU; use 'fp32' or 'auto' on CPU"])
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
