"""Padded micro-batches on CUDA run transformers' sdpa under a padding mask, not lorakit_varlen, and the planner counts
what that keeps per layer (plan/attention_memory.py): k/v repeated to every query head where transformers repeats
them, and the additive mask each layer's kernel keeps. Exact bytes on a tiny grouped-query shape, no GPU needed."""

from __future__ import annotations

from dataclasses import replace

import pytest

from lorakit.config import RunConfig
from lorakit.model import attention
from lorakit.plan.candidates import micro_batch_settings
from lorakit.plan.config_view import train_settings
from lorakit.plan.memory import ModelShape, estimate_peak_memory, layer_activation_bytes

# 4 query heads share 2 k/v heads: q is 32 wide, k and v 16 each.
GQA = ModelShape("llama", hidden=32, intermediate=64, layers=2, heads=4, kv_heads=2, head_dim=8, vocab=100,
                 tied_embeddings=True)


def _config(**training) -> RunConfig:
    return RunConfig.model_validate({
        "model": {"max_length": 64}, "data": {"train_file": "x.jsonl"}, "lora": {"r": 8, "dropout": 0.0},
        "training": {"batch_size": 4, **training}})


def _cuda(config: RunConfig, rows: int, longest: int = 40):
    """The CUDA settings of a micro-batch of `rows` examples, with flash's grouped-query k/v (as on the H100) for
    lorakit_varlen: what differs is the padded layout's own."""
    base = replace(train_settings(config, "none", dtype_bytes=2, cuda=True, longest_example=longest),
                   kv_expanded=False)
    return micro_batch_settings(base, rows * longest * config.training.sequences_per_example)


def test_a_padded_micro_batch_keeps_repeated_kv_and_its_mask_per_layer():
    packed, padded = _cuda(_config(packing=True), 4), _cuda(_config(packing=False), 4)
    assert (packed.padded_row_tokens, padded.padded_row_tokens, padded.tokens_per_micro_batch) == (0, 40, 160)
    # norms 2 x 32 x 2 = 128; LoRA on the 4 attention projections: 4 x r8 x 2 + the normed input 64 = 128; MLP:
    # gate and up 2 x 64 x 2 = 256, LoRA on 3 projections 48 + inputs (32 + 64) x 2 = 192 -> 496.
    # Attention, packed: (q + out 64 + k, v 2 x 16) x 2 + fp32 lse 4 x 4 = 208.
    assert layer_activation_bytes(GQA, packed) == 128 + 208 + 128 + 496 == 960
    # Padded: k and v repeated to 4 heads, (64 + 64) x 2 + 16 = 272, and the mask's row of 40 keys, aligned to 48,
    # in bf16: 96.
    assert layer_activation_bytes(GQA, padded) == 128 + 272 + 96 + 128 + 496 == 1120
    # The boolean mask transformers builds once per forward: one byte per key per position.
    more = estimate_peak_memory(GQA, padded).saved_activations - estimate_peak_memory(GQA, replace(
        padded, padded_row_tokens=0)).saved_activations
    assert more == 160 * (2 * (272 + 96 - 208) + 40)


def test_a_single_padded_row_has_no_mask_and_keeps_lorakit_counts():
    """One row is never padded: transformers passes no mask and sdpa takes grouped k/v itself."""
    one = _cuda(_config(packing=False), 1)
    assert one.padded_row_tokens == 40 and one.tokens_per_micro_batch == 40
    assert layer_activation_bytes(GQA, one) == 960


def test_padded_preference_pairs_are_rows_of_the_longest_sequence_without_dropout():
    """A pair is two padded rows even in a micro-batch of one; preference methods train without LoRA dropout."""
    config = RunConfig.model_validate({
        "model": {"max_length": 64}, "data": {"train_file": "x.jsonl"}, "lora": {"r": 8, "dropout": 0.05},
        "training": {"method": "dpo", "batch_size": 1, "shared_prefix": False}})
    pair = _cuda(config, 1)
    assert (pair.padded_row_tokens, pair.tokens_per_micro_batch, pair.lora_dropout) == (40, 80, False)
    assert layer_activation_bytes(GQA, pair) == 1120
    shared = _cuda(config.model_copy(update={"training": config.training.model_copy(
        update={"shared_prefix": True})}), 1)
    assert shared.padded_row_tokens == 0 and not shared.lora_dropout


def test_cpu_training_keeps_lorakit_counts_for_padded_rows():
    padded = train_settings(_config(packing=False), "none", dtype_bytes=4, cuda=False, longest_example=40)
    assert padded.padded_row_tokens == 0
    assert padded == train_settings(_config(packing=True), "none", dtype_bytes=4, cuda=False, longest_example=40)


def test_repeated_kv_is_observed_from_transformers_not_assumed(monkeypatch):
    """Under a mask, transformers 5.x repeats k/v on CUDA (use_gqa_in_sdpa); where it would pass enable_gqa
    instead, the probe sees grouped keys reach the kernel and the planner counts k/v per k/v head."""
    from transformers.integrations import sdpa_attention

    attention.padded_sdpa_repeats_kv_heads.cache_clear()
    assert attention.padded_sdpa_repeats_kv_heads() is True
    attention.padded_sdpa_repeats_kv_heads.cache_clear()
    monkeypatch.setattr(sdpa_attention, "use_gqa_in_sdpa", lambda *args: True)
    try:
        assert attention.padded_sdpa_repeats_kv_heads() is False
        grouped = _cuda(_config(packing=False), 4)
        assert not grouped.masked_kv_expanded
        assert layer_activation_bytes(GQA, grouped) == 960 + 96  # lorakit's count and the mask
    finally:
        attention.padded_sdpa_repeats_kv_heads.cache_clear()


@pytest.mark.parametrize("longest", [16, 17])
def test_the_mask_row_is_aligned_to_16_keys(longest):
    padded = _cuda(_config(packing=False), 2, longest=longest)
    packed = _cuda(_config(packing=True), 2, longest=longest)
    assert layer_activation_bytes(GQA, padded) - layer_activation_bytes(GQA, packed) == 64 + (
        32 if longest == 16 else 64)
