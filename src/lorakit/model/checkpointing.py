"""Gradient checkpointing of the first n decoder layers (or all, or none), and CPU offload of what it keeps.

transformers checkpoints all layers or every k-th; the memory planner asks for exactly as many as it needs.
A checkpointed layer keeps only its input for backward and recomputes the rest, costing one extra forward
pass of that layer. The first layers are the ones to checkpoint: backward reaches them last, after it has
freed the later layers' saved activations, so their recompute does not raise the peak (plan/memory.py).
Offloading moves the tensors autograd saves during the forward pass to pinned CPU memory; with every layer
checkpointed (reentrant) those are just the layer inputs, so long sequences need less GPU memory.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from lorakit.model.kernels import unwrap_peft_model
from lorakit.runtime.ablation import enabled

__all__ = ["decoder_layers", "apply_checkpointing", "activation_offload", "reentrant_checkpoints"]


def decoder_layers(model) -> list[torch.nn.Module]:
    """The decoder layers of a transformers causal LM (through a peft wrapper, if any)."""
    base = unwrap_peft_model(model)
    return list(base.get_decoder().layers)


def reentrant_checkpoints(offload: bool, sharded: bool = False) -> bool:
    """Which checkpoint implementation a run uses. Reentrant runs a checkpointed layer's first forward pass with
    autograd off: no graph, no saved-tensor hooks, so the host issues it faster. On the emulated 8 GB card (QLoRA,
    31 of 32 layers checkpointed) that was +19.6% tokens/s, and a step's wall time beyond its GPU kernel time
    went from 126 to 33 ms (bench/results/history/peer_speed/README.md). Offload needs it (apply_checkpointing), also under
    fsdp (a plan that offloads there is untested on GPUs). Otherwise sharded runs keep non-reentrant checkpoints,
    the kind FSDP2 documents; LORAKIT_DISABLE=reentrant_checkpoint measures the difference."""
    return offload or (not sharded and enabled("reentrant_checkpoint"))


def apply_checkpointing(model, checkpointed_layers: int, *, reentrant: bool = False) -> list[int]:
    """Checkpoint decoder layers 0 .. n-1 (n = `checkpointed_layers`; 0 = none) and no others; returns their
    indices. Also switches a loaded model's checkpointing (an out-of-memory re-plan, plan/oom.py).

    `reentrant`: `reentrant_checkpoints()` decides. CPU offload needs it: only reentrant checkpoints save their
    inputs through autograd's saved-tensor hooks, which `activation_offload` moves to the CPU.
    """
    base = unwrap_peft_model(model)
    layers = decoder_layers(model)
    assert 0 <= checkpointed_layers <= len(layers), f"{checkpointed_layers} checkpointed layers of {len(layers)}"
    if base.is_gradient_checkpointing:  # start from none: every enable adds an input-gradient hook
        base.gradient_checkpointing_disable()
        base.disable_input_require_grads()
    if checkpointed_layers == 0:
        return []
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    # LoRA on frozen embeddings: the first layer's input must carry gradients. Some transformers versions add this
    # hook in gradient_checkpointing_enable and some do not: drop theirs, add one, so a re-plan never stacks them.
    base.disable_input_require_grads()
    base.enable_input_require_grads()
    chosen = list(range(checkpointed_layers))
    for index, layer in enumerate(layers):
        layer.gradient_checkpointing = index < checkpointed_layers
    return chosen


def activation_offload(enabled: bool) -> AbstractContextManager:
    """Context for the forward pass: tensors saved for backward live in pinned CPU memory until needed."""
    # Pinned pages make the copies asynchronous; they need a CUDA runtime to allocate.
    return torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available()) if enabled else nullcontext()
