"""Shared-prefix packing: rows that begin with the same tokens are computed once up to where they part.

Under causal attention a token's hidden state depends only on the tokens before it, so two rows that share
their first n tokens have the same hidden states there. A preference pair's chosen row [P C] and rejected row
[P R] (P: their longest common token prefix: the system prompt, question and template, and any first answer
words they share) become two segments of one flat row, `[P C][R]`: [P C] is an ordinary causal segment and
[R] attends to its *parent* prefix P (the first |P| tokens of [P C]) and then causally to itself, with position
ids that continue at |P|. Every hidden state of the two original rows is computed exactly once, and none is
changed: the loss and its gradients are those of the padded rows, up to the order of float additions.

The layout is generic: any row may name an earlier row as its parent, and shares their longest common prefix.
Many pairs go into one flat row with no pads at all; an SFT micro-batch of examples that start with the same
system prompt could become `[S X1][X2]...[Xn]` the same way (every row's parent: the first).

What the batch holds for the attention (model/attention.py, `lorakit_varlen`): `cu_seq_lens_q`/`max_length_q`
over the query segments (each segment's own tokens), `kv_index` (the flat positions of each segment's keys: its
parent's prefix, then its own tokens) and `cu_seq_lens_k`/`max_length_k` over those gathered keys. Flash
attention aligns a causal mask to the bottom right when a segment has more keys than queries, which is exactly
"the prefix, then causally itself". What it holds for the loss: for every labelled token of every original row,
the flat position whose hidden state predicts it (`predicting_positions`), the label, and the row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lorakit.data.masking import IGNORE_INDEX
from lorakit.data.render import TokenizedExample

__all__ = ["MODEL_INPUTS", "Segment", "common_prefix_length", "layout_segments", "collate_shared_prefix"]

# The keys of a shared-prefix batch that the model's forward takes (the rest are the loss's).
MODEL_INPUTS = ("input_ids", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k",
                "kv_index")


@dataclass(frozen=True)
class Segment:
    """Where one original row lives in the flat row: its own tokens at [start, start + length), after the
    first `prefix_length` tokens of its parent's segment, which begins at `parent_start` (a root row: no parent,
    prefix 0). A row entirely inside its parent's prefix has length 0."""

    start: int
    length: int
    parent_start: int | None
    prefix_length: int

    def flat_position(self, token: int) -> int:
        """The flat position of the row's token number `token` (in the parent's segment for the shared prefix)."""
        if token < self.prefix_length:
            assert self.parent_start is not None
            return self.parent_start + token
        return self.start + token - self.prefix_length


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many tokens two rows share from their start.

    >>> common_prefix_length([1, 2, 3, 4], [1, 2, 5]), common_prefix_length([1, 2], [1, 2, 3]), common_prefix_length([], [1])
    (2, 2, 0)
    """
    shared = 0
    for x, y in zip(a, b):
        if x != y:
            break
        shared += 1
    return shared


def layout_segments(rows: Sequence[Sequence[int]], parents: Sequence[int | None]) -> list[Segment]:
    """Place rows in the flat row in their order; a row with a parent keeps only what follows their common prefix.

    `parents[i]`: None, or the index of an earlier row that has no parent itself.

    >>> layout_segments([[1, 2, 3, 4], [1, 2, 5]], [None, 0])
    [Segment(start=0, length=4, parent_start=None, prefix_length=0), Segment(start=4, length=1, parent_start=0, prefix_length=2)]
    """
    if len(rows) != len(parents):
        raise ValueError(f"{len(rows)} rows but {len(parents)} parents")
    segments: list[Segment] = []
    start = 0
    for index, (row, parent) in enumerate(zip(rows, parents)):
        if parent is None:
            segments.append(Segment(start, len(row), None, 0))
        else:
            if not 0 <= parent < index or parents[parent] is not None:
                raise ValueError(f"row {index}'s parent must be an earlier row without a parent, got {parent}")
            shared = common_prefix_length(row, rows[parent])
            segments.append(Segment(start, len(row) - shared, segments[parent].start, shared))
        start += segments[-1].length
    return segments


def collate_shared_prefix(rows: Sequence[TokenizedExample], parents: Sequence[int | None]) -> dict:
    """One flat row holding `rows` with their shared prefixes computed once; see the module docstring.

    The hand example: a pair whose answers share their first token (7), so P = [1, 2, 7]; the chosen row
    [1 2 7 8 9] is the root, the rejected row [1 2 7 6] keeps only [6], attending to P, at position 3.

    >>> chosen, rejected = TokenizedExample([1, 2, 7, 8, 9], [-100, -100, 7, 8, 9]), TokenizedExample([1, 2, 7, 6], [-100, -100, 7, 6])
    >>> batch = collate_shared_prefix([chosen, rejected], [None, 0])
    >>> batch["input_ids"].tolist(), batch["position_ids"].tolist()
    ([[1, 2, 7, 8, 9, 6]], [[0, 1, 2, 3, 4, 3]])
    >>> batch["cu_seq_lens_q"].tolist(), batch["max_length_q"], batch["kv_index"].tolist(), batch["cu_seq_lens_k"].tolist(), batch["max_length_k"]
    ([0, 5, 6], 5, [0, 1, 2, 3, 4, 0, 1, 2, 5], [0, 5, 9], 5)
    >>> batch["predicting_positions"].tolist(), batch["predicted_labels"].tolist(), batch["label_rows"].tolist()
    ([1, 2, 3, 1, 2], [7, 8, 9, 7, 6], [0, 0, 0, 1, 1])
    >>> batch["row_count"], batch["row_tokens"], batch["label_counts"].tolist()
    (2, 9, [3, 2])
    """
    if not rows or any(not row.input_ids for row in rows):
        raise ValueError("collate_shared_prefix needs at least one row, and no empty ones")
    segments = layout_segments([row.input_ids for row in rows], parents)
    input_ids: list[int] = []
    positions: list[int] = []
    kv_index: list[int] = []
    q_lengths: list[int] = []
    k_lengths: list[int] = []
    for row, segment in zip(rows, segments):
        if segment.length == 0:  # the whole row is its parent's prefix: nothing of its own to compute
            continue
        input_ids += row.input_ids[segment.prefix_length:]
        positions += range(segment.prefix_length, len(row.input_ids))
        if segment.parent_start is not None:
            kv_index += range(segment.parent_start, segment.parent_start + segment.prefix_length)
        kv_index += range(segment.start, segment.start + segment.length)
        q_lengths.append(segment.length)
        k_lengths.append(segment.prefix_length + segment.length)
    predicting, labels, label_rows = [], [], []
    for index, (row, segment) in enumerate(zip(rows, segments)):
        for token in range(1, len(row.labels)):  # the hidden state of token t - 1 predicts token t
            if row.labels[token] != IGNORE_INDEX:
                predicting.append(segment.flat_position(token - 1))
                labels.append(row.labels[token])
                label_rows.append(index)
    return {
        "input_ids": torch.tensor([input_ids], dtype=torch.long),
        "position_ids": torch.tensor([positions], dtype=torch.long),
        "cu_seq_lens_q": _cumulative(q_lengths),
        "max_length_q": max(q_lengths),
        "kv_index": torch.tensor(kv_index, dtype=torch.long),
        "cu_seq_lens_k": _cumulative(k_lengths),
        "max_length_k": max(k_lengths),
        "predicting_positions": torch.tensor(predicting, dtype=torch.long),
        "predicted_labels": torch.tensor(labels, dtype=torch.long),
        "label_rows": torch.tensor(label_rows, dtype=torch.long),
        "label_counts": torch.bincount(torch.tensor(label_rows, dtype=torch.long), minlength=len(rows)),
        "row_count": len(rows),
        "row_tokens": sum(len(row.input_ids) for row in rows),  # what the rows hold, as a padded batch counts them
    }


def _cumulative(lengths: list[int]) -> torch.Tensor:
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int32), 0)
    return cu
