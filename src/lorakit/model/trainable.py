"""A loaded base model -> the model lorakit trains: fused kernels, LoRA, isolated packed attention, and the
planned gradient checkpointing, in that order (kernels patch the base modules that LoRA then wraps)."""

from __future__ import annotations

import torch

from lorakit.config import RunConfig
from lorakit.model.adapters import attach_lora
from lorakit.model.attention import use_varlen_attention
from lorakit.model.checkpointing import apply_checkpointing
from lorakit.model.kernels import apply_fused_kernels

__all__ = ["make_trainable"]


def make_trainable(model, config: RunConfig, *, device: torch.device, quantized: bool,
                   checkpoint_every: int | None, offload_activations: bool = False):
    """Wrap `model` for training; returns the peft model. `checkpoint_every`: None, 1 (all) or k."""
    apply_fused_kernels(model, device)
    model = attach_lora(model, config.lora, quantized=quantized, gradient_checkpointing=False)
    if config.training.packing:
        use_varlen_attention(model)
    # Offloading hands checkpointed inputs to autograd's saved-tensor hooks, which only reentrant checkpoints use.
    apply_checkpointing(model, checkpoint_every, reentrant=offload_activations)
    return model
