"""Memory per GPU under FSDP2 (training.distributed fsdp, training/sharding.py), from the one-GPU estimate of
plan/memory.py, and the choice between ddp and fsdp for `training.distributed: auto`.

What a GPU holds at the peak of a sharded step:
- its 1/N shard of every frozen weight and of the LoRA weights, gradients and AdamW moments;
- the root's weights whole (embeddings, final norm and head, gathered for the loss and kept from forward to
  backward, FSDP2's default for the root);
- two decoder layers' weights whole: the one running and the next one, gathered ahead (FSDP2's prefetch), in
  forward and again in backward;
- the activations of its own micro-batch, as on one GPU (sharding weights does not shard activations).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from lorakit.plan.memory import (
    MemoryEstimate,
    TrainSettings,
    estimate_peak_memory,
    lora_parameter_count,
)
from lorakit.plan.model_shape import ModelShape

__all__ = ["UNSHARDED_LAYERS", "sharded_estimate", "choose_distributed"]

UNSHARDED_LAYERS = 2  # the layer that runs and the one FSDP2 gathers ahead of it
_LORA_WEIGHT_AND_GRADIENT_BYTES = 8  # fp32 LoRA weight + its gradient, whole in a gathered layer


def sharded_estimate(shape: ModelShape, settings: TrainSettings, world_size: int) -> MemoryEstimate:
    """The peak per GPU of `settings` with weights and LoRA states sharded over `world_size` GPUs.

    >>> from lorakit.plan.memory import GIB
    >>> phi4_mini = ModelShape.from_config(dict(model_type="phi3", hidden_size=3072, intermediate_size=8192,
    ...     num_hidden_layers=32, num_attention_heads=24, num_key_value_heads=8, vocab_size=200064,
    ...     tie_word_embeddings=True))
    >>> settings = TrainSettings(quantization="none", dtype_bytes=2, lora_rank=16, lora_targets="all-linear",
    ...                          lora_dropout=True, tokens_per_micro_batch=2048)
    >>> one, two = estimate_peak_memory(phi4_mini, settings), sharded_estimate(phi4_mini, settings, 2)
    >>> round(one.weights / GIB, 2), round(two.weights / GIB, 2)  # half of 7.15, + embeddings + 2 layers
    (7.15, 5.09)
    >>> two.saved_activations == one.saved_activations
    True
    """
    one_gpu = estimate_peak_memory(shape, settings)
    b = settings.dtype_bytes
    root = (shape.embedding_params + shape.head_params + shape.hidden) * b
    layer = (shape.linear_params_per_layer + 2 * shape.hidden) * b
    lora_per_layer = lora_parameter_count(shape, settings) // shape.layers * _LORA_WEIGHT_AND_GRADIENT_BYTES
    return replace(
        one_gpu,
        weights=one_gpu.weights // world_size + root + UNSHARDED_LAYERS * layer,
        lora_states=one_gpu.lora_states // world_size + UNSHARDED_LAYERS * lora_per_layer,
    )


def choose_distributed(distributed: str, quantization: str, world_size: int, *, cuda: bool,
                       one_gpu_fits: Callable[[], bool]) -> str:
    """'ddp' or 'fsdp' for `training.distributed` (`auto`: fsdp only when several GPUs train bf16 LoRA and the
    plan for one GPU does not fit; nf4 cannot be sharded, config.py says why).

    >>> choose_distributed("auto", "none", 2, cuda=True, one_gpu_fits=lambda: False)
    'fsdp'
    >>> choose_distributed("auto", "nf4", 2, cuda=True, one_gpu_fits=lambda: False)
    'ddp'
    >>> choose_distributed("auto", "none", 1, cuda=True, one_gpu_fits=lambda: False)
    'ddp'
    """
    if distributed != "auto":
        return distributed
    if world_size == 1 or not cuda or quantization == "nf4":
        return "ddp"
    return "ddp" if one_gpu_fits() else "fsdp"
