"""Loss labels: the token id where the assistant speaks, IGNORE_INDEX everywhere else."""

from __future__ import annotations

__all__ = ["IGNORE_INDEX", "labels_from_spans"]

IGNORE_INDEX = -100  # torch.nn.CrossEntropyLoss's default ignore_index


def labels_from_spans(input_ids: list[int], token_starts: list[int], spans: list[tuple[int, int]]) -> list[int]:
    """Supervise each token whose first character lies inside an assistant span.

    >>> labels_from_spans([7, 8, 9, 10], [0, 3, 5, 9], [(3, 9)])
    [-100, 8, 9, -100]
    """
    assert len(input_ids) == len(token_starts), "one start offset per token"
    labels = []
    for token_id, start in zip(input_ids, token_starts):
        inside = any(span_start <= start < span_end for span_start, span_end in spans)
        labels.append(token_id if inside else IGNORE_INDEX)
    return labels
