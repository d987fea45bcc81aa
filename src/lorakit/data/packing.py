"""Padding-free packing: best-fit bins of examples, collated into one flat row with per-example positions.

A packed micro-batch is a single row `[1, total_tokens]` holding several examples back to back. Position ids
restart at 0 for every example, and the attention layer (model/attention.py) uses them, or the
`cu_seq_lens` computed here, to keep examples from attending to each other. The first label of every
example is IGNORE_INDEX: in a flat row the causal shift would otherwise ask the last token of one example
to predict the first token of the next.

Why best fit, decreasing: it leaves the least empty room in the bins (within 11/9 of optimal bins), and
with a sorted list of remaining capacities each placement is one binary search.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import torch

from lorakit.data.masking import IGNORE_INDEX
from lorakit.data.render import TokenizedExample

__all__ = ["pack_best_fit", "packing_efficiency", "collate_packed"]


def pack_best_fit(lengths: Sequence[int], capacity_tokens: int) -> list[list[int]]:
    """Group example indices into bins of at most `capacity_tokens` tokens (best fit, longest first).

    Bins come out in a deterministic order (by their first, longest example); within a bin indices are
    in placement order. Every index appears exactly once.

    >>> pack_best_fit([5, 3, 4, 2, 6], capacity_tokens=8)
    [[4, 3], [0, 1], [2]]
    >>> pack_best_fit([], 8)
    []
    >>> pack_best_fit([9], 8)
    Traceback (most recent call last):
    ...
    ValueError: example 0 has 9 tokens, more than the bin capacity of 8
    """
    if capacity_tokens < 1:
        raise ValueError(f"capacity_tokens must be positive, got {capacity_tokens}")
    for index, length in enumerate(lengths):
        if length > capacity_tokens:
            raise ValueError(f"example {index} has {length} tokens, more than the bin capacity of {capacity_tokens}")
    bins: list[list[int]] = []
    # Parallel sorted lists: remaining room of each open bin, and that bin's position in `bins`.
    room: list[int] = []
    owner: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        length = lengths[index]
        slot = bisect.bisect_left(room, length)  # the fullest bin that still fits
        if slot == len(room):
            bins.append([index])
            left, bin_id = capacity_tokens - length, len(bins) - 1
        else:
            left, bin_id = room.pop(slot) - length, owner.pop(slot)
            bins[bin_id].append(index)
        insert_at = bisect.bisect_left(room, left)
        room.insert(insert_at, left)
        owner.insert(insert_at, bin_id)
    return bins


def packing_efficiency(lengths: Sequence[int], bins: list[list[int]], capacity_tokens: int) -> float:
    """Fraction of the bins' capacity filled with real tokens.

    >>> packing_efficiency([5, 3, 4, 2, 6], [[4, 3], [0, 1], [2]], 8)
    0.8333333333333334
    """
    if not bins:
        return 1.0
    return sum(lengths[i] for group in bins for i in group) / (len(bins) * capacity_tokens)


def collate_packed(examples: list[TokenizedExample]) -> dict[str, torch.Tensor | int]:
    """One flat row: input ids, labels (first label of each example ignored), restarting position ids.

    Also returns `cu_seq_lens_q/k` (int32 example boundaries) and `max_length_q/k`, the keyword arguments
    transformers' attention layers accept for variable-length kernels, so no layer has to derive them.

    >>> batch = collate_packed([TokenizedExample([1, 2, 3], [1, 2, 3]), TokenizedExample([4, 5], [-100, 5])])
    >>> batch["input_ids"].tolist(), batch["labels"].tolist(), batch["position_ids"].tolist()
    ([[1, 2, 3, 4, 5]], [[-100, 2, 3, -100, 5]], [[0, 1, 2, 0, 1]])
    >>> batch["cu_seq_lens_q"].tolist(), batch["max_length_q"]
    ([0, 3, 5], 3)
    """
    if not examples or any(not example.input_ids for example in examples):
        raise ValueError("collate_packed needs at least one example, and no empty ones")
    lengths = [len(example.input_ids) for example in examples]
    input_ids = torch.tensor([token for example in examples for token in example.input_ids], dtype=torch.long)
    labels = torch.tensor([label for example in examples for label in example.labels], dtype=torch.long)
    position_ids = torch.cat([torch.arange(length, dtype=torch.long) for length in lengths])
    cu_seq_lens = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu_seq_lens[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int32), 0)
    labels[cu_seq_lens[:-1].long()] = IGNORE_INDEX
    return {
        "input_ids": input_ids.unsqueeze(0),
        "labels": labels.unsqueeze(0),
        "position_ids": position_ids.unsqueeze(0),
        "cu_seq_lens_q": cu_seq_lens,
        "cu_seq_lens_k": cu_seq_lens,
        "max_length_q": max(lengths),
        "max_length_k": max(lengths),
    }
