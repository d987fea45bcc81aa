"""Which examples form each micro-batch: a pure function of (seed, epoch), so a resumed run sees
exactly the batches the uninterrupted run would have seen."""

from __future__ import annotations

import functools
from dataclasses import replace

import torch

from lorakit.config import RunConfig
from lorakit.data.collate import collate_padded
from lorakit.data.packing import collate_packed, pack_best_fit
from lorakit.data.preference_batch import PairLayout, PreferenceExample, collate_preferences, collate_preferences_shared
from lorakit.data.render import TokenizedExample
from lorakit.data.shared_packing import collate_packed_shared

__all__ = ["epoch_seed", "epoch_groups", "epoch_permutation", "run_pair_layout", "packed_epoch_groups",
           "collate_group", "batch_tokens"]


def epoch_seed(seed: int, epoch: int) -> int:
    """The generator seed of one epoch's data order, inside torch's seed range [0, 2**64) for any seed.

    The config bounds `seed` to 0..2**32-1, where this is `seed * 100_003 + epoch` as it always was (so runs
    keep their data order); the modulus keeps library callers with other seeds from overflowing torch.

    >>> epoch_seed(42, 3)
    4200129
    >>> 0 <= epoch_seed(2**70, 1) < 2**64 and 0 <= epoch_seed(-5, 0) < 2**64
    True
    """
    return (seed * 100_003 + epoch) % 2**64


def epoch_groups(examples: list[TokenizedExample], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Shuffled example indices for one epoch, cut into micro-batches (the last may be smaller).

    >>> epoch_groups([TokenizedExample([1], [1])] * 5, 2, seed=0, epoch=0) == epoch_groups([TokenizedExample([1], [1])] * 5, 2, 0, 0)
    True
    """
    order = epoch_permutation(len(examples), seed, epoch).tolist()
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def epoch_permutation(count: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled indices of `count` examples in one epoch (unpacked runs cut it into micro-batches, `epoch_groups`);
    the memory planner bounds preference micro-batches over it (data/preference_batch.PairLayout, `run_pair_layout`).

    >>> sorted(epoch_permutation(5, seed=0, epoch=1).tolist()) == [0, 1, 2, 3, 4]
    True
    """
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    return torch.randperm(count, generator=generator)


def run_pair_layout(pairs: PairLayout | None, config: RunConfig) -> PairLayout | None:
    """`pairs` with the run's data order: the planner then bounds the micro-batches the run really trains on
    (max_steps x gradient_accumulation_steps of them, epoch after epoch), not `batch_size` x the largest pair."""
    if pairs is None:
        return None
    training = config.training
    return replace(pairs, order=functools.partial(epoch_permutation, len(pairs.positions), config.seed),
                   micro_batches=training.max_steps * training.gradient_accumulation_steps)


def packed_epoch_groups(examples: list[TokenizedExample], capacity_tokens: int, seed: int, epoch: int) -> list[list[int]]:
    """Best-fit bins of at most `capacity_tokens` tokens (one packed micro-batch each), shuffled by (seed, epoch).

    >>> packed_epoch_groups([TokenizedExample([1] * n, [1] * n) for n in (3, 5, 2)], 8, seed=0, epoch=0) in ([[1, 0], [2]], [[2], [1, 0]])
    True
    """
    bins = pack_best_fit([len(example.input_ids) for example in examples], capacity_tokens)
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    return [bins[i] for i in torch.randperm(len(bins), generator=generator).tolist()]


def collate_group(
    examples: list[TokenizedExample] | list[PreferenceExample], group: list[int], pad_token_id: int, *,
    packed: bool = False, shared_prefix: bool = False
) -> dict[str, torch.Tensor | int]:
    """Padded rows, or (packed) one flat row with per-example positions and boundaries, with (shared_prefix) each
    example's common prefix with the row's root example computed once; preference pairs: their chosen rows, then
    their rejected rows, padded, or (shared_prefix) in one flat row with each pair's common prefix computed once
    (never packed otherwise: the config refuses it)."""
    picked = [examples[i] for i in group]
    if picked and isinstance(picked[0], PreferenceExample):
        assert not packed, "preference pairs are never packed"
        return collate_preferences_shared(picked) if shared_prefix else collate_preferences(picked, pad_token_id)
    if packed:
        return collate_packed_shared(picked) if shared_prefix else collate_packed(picked)
    return collate_padded(picked, pad_token_id)


def batch_tokens(batch: dict) -> int:
    """Real tokens of a collated micro-batch's rows, what tokens/s counts: pads excluded, and a shared-prefix
    batch's rows counted whole (the work it stands for, as a padded batch of the same pairs counts it), not its
    computed positions.

    >>> batch_tokens({"input_ids": torch.ones(1, 5), "row_tokens": 9}), batch_tokens({"input_ids": torch.ones(1, 5)})
    (9, 5)
    """
    if "row_tokens" in batch:
        return int(batch["row_tokens"])
    return int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
