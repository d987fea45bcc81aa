"""Pick the device and the training/inference dtype from the hardware and the config."""

from __future__ import annotations

import os

import torch

from lorakit.errors import ConfigError

__all__ = ["pick_device", "compute_dtype", "EXPANDABLE_SEGMENTS", "use_expandable_segments"]

# PyTorch's caching allocator, with its default fixed-size segments, kept 20-25% of a checkpointed QLoRA step's
# peak as fragments on an H100 (bench/results: 5.90 GiB allocated, 7.23 reserved); expandable segments grow one
# mapping instead (https://pytorch.org/docs/stable/notes/cuda.html#optimizing-memory-usage-with-pytorch-cuda-alloc-conf).
EXPANDABLE_SEGMENTS = "expandable_segments:True"


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


def use_expandable_segments(environ: dict | None = None) -> bool:
    """Have PyTorch's CUDA allocator use expandable segments in this process, unless the user configured the
    allocator (PYTORCH_CUDA_ALLOC_CONF, or PYTORCH_ALLOC_CONF, its newer name) or CUDA already started (the
    allocator reads its settings once). True when it was set here. The memory planner's ALLOCATOR_SLACK
    assumes it (plan/memory.py).

    >>> environ = {}
    >>> use_expandable_segments(environ), environ
    (True, {'PYTORCH_CUDA_ALLOC_CONF': 'expandable_segments:True'})
    >>> use_expandable_segments({"PYTORCH_ALLOC_CONF": "max_split_size_mb:512"})
    False
    """
    environ = os.environ if environ is None else environ
    if "PYTORCH_CUDA_ALLOC_CONF" in environ or "PYTORCH_ALLOC_CONF" in environ or torch.cuda.is_initialized():
        return False
    environ["PYTORCH_CUDA_ALLOC_CONF"] = EXPANDABLE_SEGMENTS
    return True
