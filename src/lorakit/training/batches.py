"""Which examples form each micro-batch: a pure function of (seed, epoch), so a resumed run sees
exactly the batches the uninterrupted run would have seen."""

from __future__ import annotations

import torch

from lorakit.data.collate import collate_padded
from lorakit.data.render import TokenizedExample

__all__ = ["epoch_groups", "collate_group"]


def epoch_groups(examples: list[TokenizedExample], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Shuffled example indices for one epoch, cut into micro-batches (the last may be smaller).

    >>> epoch_groups([TokenizedExample([1], [1])] * 5, 2, seed=0, epoch=0) == epoch_groups([TokenizedExample([1], [1])] * 5, 2, 0, 0)
    True
    """
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(examples), generator=generator).tolist()
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def collate_group(examples: list[TokenizedExample], group: list[int], pad_token_id: int) -> dict[str, torch.Tensor]:
    return collate_padded([examples[i] for i in group], pad_token_id)
