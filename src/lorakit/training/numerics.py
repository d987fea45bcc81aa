"""Numerical faults: a NaN or Inf loss or gradient stops the run with the step, the batch's examples and what
to change; fp16 trains with a loss scaler (bf16 and fp32 have fp32's exponent range and need none)."""

from __future__ import annotations

import torch

from lorakit.data.render import TokenizedExample
from lorakit.errors import TrainingError

__all__ = ["MIN_LOSS_SCALE", "loss_scaler", "numerical_fault"]

# GradScaler halves its scale after every step whose gradients overflowed (and skips that step). Below 1 the
# gradients overflow even unscaled: skipping further steps would only stall the run silently.
MIN_LOSS_SCALE = 1.0


def loss_scaler(dtype: torch.dtype, device: torch.device) -> torch.amp.GradScaler | None:
    """A dynamic loss scaler for fp16 (whose small range underflows gradients), else None."""
    return torch.amp.GradScaler(device.type) if dtype == torch.float16 else None


def numerical_fault(
    examples: list[TokenizedExample], dtype: torch.dtype, step: int, groups: list[list[int]], what: str
) -> TrainingError:
    """The error that stops a run at a non-finite loss or gradient: where, on which examples, and what to do."""
    ids = ", ".join(f"{examples[i].source}:{examples[i].line}" for group in groups for i in group)
    advice = "Lower training.learning_rate (e.g. by 10x)"
    if dtype == torch.float16:
        advice += " and use training.precision: bf16 instead of fp16 if the GPU supports it (fp16 overflows at 65504)"
    return TrainingError(
        f"{what} at step {step}; examples in this batch: {ids}. The last good checkpoint is kept.",
        hint=f"{advice}, then resume with --resume.",
    )
