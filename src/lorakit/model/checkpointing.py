"""Gradient checkpointing of every k-th decoder layer (or all, or none), and CPU offload of what it keeps.

transformers checkpoints all layers or none; the memory planner often needs only some. A checkpointed layer
keeps only its input for backward and recomputes the rest, costing one extra forward pass of that layer.
Offloading moves the tensors autograd saves during the forward pass to pinned CPU memory; with every layer
checkpointed (reentrant) those are just the layer inputs, so long sequences need less GPU memory.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

__all__ = ["decoder_layers", "apply_checkpointing", "activation_offload"]


def decoder_layers(model) -> list[torch.nn.Module]:
    """The decoder layers of a transformers causal LM (through a peft wrapper, if any)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return list(base.get_decoder().layers)


def apply_checkpointing(model, checkpoint_every: int | None, *, reentrant: bool = False) -> list[int]:
    """Checkpoint layers 0, k, 2k, ... (k = `checkpoint_every`; 1 = all; None = none); returns their indices.

    Non-reentrant by default. `reentrant=True` is for CPU offload: only reentrant checkpoints save their
    inputs through autograd's saved-tensor hooks, which `activation_offload` moves to the CPU.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = decoder_layers(model)
    if checkpoint_every is None:
        if base.is_gradient_checkpointing:
            base.gradient_checkpointing_disable()
        return []
    assert checkpoint_every >= 1, "checkpoint_every counts layers: 1 = every layer"
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    base.enable_input_require_grads()  # LoRA on frozen embeddings: the first layer's input must carry gradients
    chosen = list(range(0, len(layers), checkpoint_every))
    for index, layer in enumerate(layers):
        layer.gradient_checkpointing = index in chosen
    return chosen


def activation_offload(enabled: bool) -> AbstractContextManager:
    """Context for the forward pass: tensors saved for backward live in pinned CPU memory until needed."""
    # Pinned pages make the copies asynchronous; they need a CUDA runtime to allocate.
    return torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available()) if enabled else nullcontext()
