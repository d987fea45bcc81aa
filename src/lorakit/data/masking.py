"""Loss labels: the token id where the assistant speaks, IGNORE_INDEX everywhere else."""

from __future__ import annotations

from bisect import bisect_left

__all__ = ["IGNORE_INDEX", "labels_from_spans", "span_token_ranges"]

IGNORE_INDEX = -100  # torch.nn.CrossEntropyLoss's default ignore_index


def span_token_ranges(token_starts: list[int], spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """For each [start, end) character span, the [first, last) tokens whose first character lies inside it.

    `token_starts` must be non-decreasing (token offsets are), which makes each lookup a binary search.

    >>> span_token_ranges([0, 3, 5, 9], [(3, 9)])
    [(1, 3)]
    """
    return [(bisect_left(token_starts, start), bisect_left(token_starts, end)) for start, end in spans]


def labels_from_spans(input_ids: list[int], token_starts: list[int], spans: list[tuple[int, int]]) -> list[int]:
    """Supervise each token whose first character lies inside an assistant span.

    >>> labels_from_spans([7, 8, 9, 10], [0, 3, 5, 9], [(3, 9)])
    [-100, 8, 9, -100]
    """
    assert len(input_ids) == len(token_starts), "one start offset per token"
    labels = [IGNORE_INDEX] * len(input_ids)
    for first, last in span_token_ranges(token_starts, spans):
        labels[first:last] = input_ids[first:last]
    return labels
