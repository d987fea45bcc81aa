"""Which examples form each micro-batch: a pure function of (seed, epoch), so a resumed run sees
exactly the batches the uninterrupted run would have seen."""

from __future__ import annotations

import torch

from lorakit.data.collate import collate_padded
from lorakit.data.packing import collate_packed, pack_best_fit
from lorakit.data.render import TokenizedExample

__all__ = ["epoch_groups", "packed_epoch_groups", "collate_group"]


def epoch_groups(examples: list[TokenizedExample], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Shuffled example indices for one epoch, cut into micro-batches (the last may be smaller).

    >>> epoch_groups([TokenizedExample([1], [1])] * 5, 2, seed=0, epoch=0) == epoch_groups([TokenizedExample([1], [1])] * 5, 2, 0, 0)
    True
    """
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(examples), generator=generator).tolist()
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def packed_epoch_groups(examples: list[TokenizedExample], capacity_tokens: int, seed: int, epoch: int) -> list[list[int]]:
    """Best-fit bins of at most `capacity_tokens` tokens (one packed micro-batch each), shuffled by (seed, epoch).

    >>> packed_epoch_groups([TokenizedExample([1] * n, [1] * n) for n in (3, 5, 2)], 8, seed=0, epoch=0) in ([[1, 0], [2]], [[2], [1, 0]])
    True
    """
    bins = pack_best_fit([len(example.input_ids) for example in examples], capacity_tokens)
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return [bins[i] for i in torch.randperm(len(bins), generator=generator).tolist()]


def collate_group(
    examples: list[TokenizedExample], group: list[int], pad_token_id: int, *, packed: bool = False
) -> dict[str, torch.Tensor | int]:
    """Padded rows, or (packed) one flat row with per-example positions and boundaries."""
    chosen = [examples[i] for i in group]
    return collate_packed(chosen) if packed else collate_padded(chosen, pad_token_id)
