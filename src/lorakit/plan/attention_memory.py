"""What one decoder layer's attention keeps for backward, per token, by the attention a micro-batch runs.

- lorakit_varlen (packed SFT rows, shared-prefix preference pairs; model/attention.py): q, k, v, the output and the
  fp32 log-sum-exp, k/v repeated to every query head where PyTorch's varlen flash has no grouped-query mode.
- transformers' sdpa under a padding mask (padded SFT rows, preference pairs without shared prefixes), on CUDA: the
  same tensors with k/v repeated to every query head where transformers repeats them under a mask
  (model/attention.padded_sdpa_repeats_kv_heads), and the mask the kernel keeps (`padding_mask_bytes`). Session 10's
  padded DPO rows on an H100 held 8.7 KB per position and layer more than lorakit_varlen's count for Phi-4-mini;
  repeating its 8 k/v heads to 24 is 8,192 bytes of it (bench/results/preference_speed/README.md).

On CPU the planner keeps lorakit's count for padded rows too (tests/plan/test_memory_cpu.py measures that path).
plan/memory.py adds the rest of a layer (norms, LoRA inputs, MLP).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lorakit.plan.memory import TrainSettings
    from lorakit.plan.model_shape import ModelShape

__all__ = ["padding_mask", "kv_width", "padding_mask_bytes", "attention_kernel_bytes"]


def padding_mask(settings: TrainSettings) -> bool:
    """Whether a micro-batch's attention runs under a padding mask: padded rows on CUDA, more than one of them (a
    single row has no padding, so transformers passes no mask and sdpa runs its flash kernel).

    >>> from lorakit.plan.memory import TrainSettings
    >>> rows = TrainSettings("nf4", 2, 16, "all-linear", False, tokens_per_micro_batch=1000, padded_row_tokens=500)
    >>> padding_mask(rows), padding_mask(TrainSettings("nf4", 2, 16, "all-linear", False, 500, padded_row_tokens=500))
    (True, False)
    """
    return 0 < settings.padded_row_tokens < settings.tokens_per_micro_batch


def kv_width(shape: ModelShape, settings: TrainSettings) -> int:
    """Elements per token of the keys (or the values) attention keeps: one head_dim per query head where they are
    repeated, per k/v head otherwise."""
    expanded = settings.masked_kv_expanded if padding_mask(settings) else settings.kv_expanded
    return (shape.heads if expanded else shape.kv_heads) * shape.head_dim


def padding_mask_bytes(settings: TrainSettings) -> int:
    """Bytes per token that one layer's attention keeps for its padding mask. transformers builds one boolean
    [rows, 1, T, T] mask per forward; PyTorch's scaled_dot_product_attention turns it into an additive mask in the
    query's dtype on every call (convert_boolean_attn_mask in aten/src/ATen/native/transformers/attention.cpp; the
    memory-efficient kernel pads its key dimension to a multiple of 8 or 16), and the kernel's backward takes that
    bias, so each layer that is not checkpointed keeps its own: T keys per query, rounded up to 16, in the dtype.

    >>> from lorakit.plan.memory import TrainSettings
    >>> padding_mask_bytes(TrainSettings("nf4", 2, 16, "all-linear", False, 8120, padded_row_tokens=1015))
    2048
    """
    if not padding_mask(settings):
        return 0
    return -(-settings.padded_row_tokens // 16) * 16 * settings.dtype_bytes


def attention_kernel_bytes(shape: ModelShape, settings: TrainSettings) -> int:
    """Bytes per token one layer's attention kernel keeps for backward (its LoRA projections' inputs aside): q, k, v
    and the output in the dtype (k/v `keys_per_token` times in a shared-prefix batch, whose rejected rows gather
    their prefix's keys again), the fp32 log-sum-exp per head, and under a padding mask the mask."""
    q = shape.heads * shape.head_dim
    tensors = round((2 * q + 2 * kv_width(shape, settings) * settings.keys_per_token) * settings.dtype_bytes)
    return tensors + shape.heads * 4 + padding_mask_bytes(settings)
