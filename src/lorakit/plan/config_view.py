"""The planner's view of a run config: the TrainSettings it starts from (`train_settings`), the tokens one example
puts in a micro-batch (`planned_length`: padded, packed, or a preference pair's shared-prefix positions), the
positions a packed row with shared prefixes computes (`shared_bin_positions`), and the positions and keys of a
micro-batch of shared-prefix preference pairs (`pair_micro_batches`). plan/run_plan.py plans a new run from these
and plan/oom.py re-plans after an out-of-memory error, so both count a micro-batch alike.
"""

from __future__ import annotations

from functools import partial

from lorakit.config import RunConfig
from lorakit.data.preference_batch import PairLayout
from lorakit.data.shared_packing import PrefixSharing
from lorakit.model.attention import expands_kv_heads, padded_sdpa_repeats_kv_heads
from lorakit.plan.memory import TrainSettings

__all__ = ["train_settings", "planned_length", "shared_bin_positions", "pair_micro_batches"]


def shared_bin_positions(config: RunConfig, sharing: PrefixSharing | None, *, replanning: bool = False):
    """The planner's `bin_positions` for a packed SFT run that shares prefixes (None otherwise, or without data).
    `replanning` (after an out-of-memory error): the run keeps its bins of training.batch_size rows and cuts them
    into smaller micro-batches, so a smaller candidate is bounded over those pieces."""
    training = config.training
    if sharing is None or training.method != "sft" or not training.shares_prefixes:
        return None
    if replanning:
        return partial(sharing.bin_positions, packed_as=training.batch_size * config.model.max_length)
    return sharing.bin_positions


def pair_micro_batches(config: RunConfig, pairs: PairLayout | None, *, replanning: bool = False):
    """The planner's `micro_batch_layout` for shared-prefix preference pairs (None otherwise, or without data):
    micro-batch size -> (positions, keys) of the largest micro-batch (data/preference_batch.PairLayout.micro_batch:
    the run's own micro-batches where the session gave its order). `replanning` (after an out-of-memory error): the
    run keeps its micro-batches of training.batch_size pairs and cuts them into smaller pieces."""
    training = config.training
    if pairs is None or training.method == "sft" or not training.shares_prefixes:
        return None
    return partial(pairs.micro_batch, cut_from=training.batch_size) if replanning else pairs.micro_batch


def planned_length(config: RunConfig, longest_example: int | None, pairs: PairLayout | None = None) -> int:
    """Tokens one example puts in a micro-batch: max_length, or without packing the data's longest sequence if
    shorter (a micro-batch is padded to its longest example, not to max_length); times two for a preference pair,
    whose chosen and rejected sequences are both rows of the batch. With shared prefixes (training.shared_prefix)
    a pair puts |P| + |C| + |R| positions in one unpadded row: the data's largest such pair (`pairs`).

    >>> from lorakit.config import RunConfig
    >>> dpo = RunConfig.model_validate({"model": {"max_length": 512}, "data": {"train_file": "x.jsonl"},
    ...                                 "training": {"method": "dpo"}})
    >>> planned_length(dpo, 300, PairLayout((450, 320), (600, 400))), planned_length(dpo, 300), planned_length(
    ...     dpo.model_copy(update={"training": dpo.training.model_copy(update={"shared_prefix": False})}), 300)
    (450, 1024, 600)
    """
    if config.training.shares_prefixes and config.training.method != "sft":
        return pairs.largest_pair if pairs else 2 * config.model.max_length
    per_row = config.model.max_length
    if longest_example and not config.training.packing:
        per_row = min(config.model.max_length, longest_example)
    return per_row * config.training.sequences_per_example


def train_settings(config: RunConfig, quantization: str, *, dtype_bytes: int, cuda: bool,
                   pairs: PairLayout | None = None, longest_example: int | None = None) -> TrainSettings:
    """The planner's view of a run config (micro-batch and checkpointing are the plan's to fill in). Shared-prefix
    pairs without the data: a pair's keys are at most twice its positions. `longest_example` (tokens, when the data
    is known): a padded row is padded to it, not to max_length (`planned_length`).

    Preference methods train without LoRA dropout (training/preference_setup.py), so no dropout masks or dropped
    copies are counted for them: counting them put the session-10 whole-GPU row (bench/results/preference_speed)
    3.0 GiB above its measured peak. Padded batches (no packing; preference pairs without shared prefixes) run the
    model's own sdpa attention under a padding mask on CUDA, not lorakit_varlen (model/trainable.py), and are
    counted as that (plan/attention_memory.py: k/v repeated where transformers repeats them, the mask); on CPU they
    keep lorakit's count. Both preference layouts score answers through the chunked preference head
    (`chunked_head`)."""
    targets = config.lora.target_modules
    training = config.training
    preference = training.method != "sft"
    varlen = training.packing or training.shares_prefixes  # model/trainable.py switches these to lorakit_varlen
    padded_row = planned_length(config, longest_example) // training.sequences_per_example
    return TrainSettings(
        quantization=quantization, dtype_bytes=dtype_bytes, lora_rank=config.lora.r,
        lora_targets=targets if targets == "all-linear" else tuple(targets),
        lora_dropout=config.lora.dropout > 0 and not preference,
        chunked_head=preference, tokens_per_micro_batch=config.model.max_length,
        fused_kernels=cuda, mask_bytes=1 if cuda else dtype_bytes, kv_expanded=expands_kv_heads(),
        dora=config.lora.use_dora, on_cpu=not cuda,
        keys_per_token=(pairs.keys_per_position if pairs else 2.0) if training.shares_prefixes and preference else 1.0,
        padded_row_tokens=0 if varlen or not cuda else padded_row,
        masked_kv_expanded=padded_sdpa_repeats_kv_heads() if cuda and not varlen else True,
    )
