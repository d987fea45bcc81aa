"""Labels from character spans: the binary search agrees with a plain scan of every token."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from lorakit.data.masking import IGNORE_INDEX, labels_from_spans


def scan_labels(input_ids, token_starts, spans):
    """The rule stated directly: a token is supervised when its first character lies in a span."""
    return [token if any(a <= start < b for a, b in spans) else IGNORE_INDEX
            for token, start in zip(input_ids, token_starts)]


@given(st.lists(st.integers(0, 3), max_size=40), st.lists(st.tuples(st.integers(0, 60), st.integers(0, 60)),
                                                          max_size=4))
def test_labels_from_spans_equal_a_scan_of_every_token(steps, raw_spans):
    starts, position = [], 0
    for step in steps:
        position += step
        starts.append(position)
    ids = list(range(100, 100 + len(starts)))
    # Answer spans never overlap (chat_spans refuses that); the scan and the search agree on disjoint spans.
    spans, end = [], 0
    for a, b in sorted((min(a, b), max(a, b)) for a, b in raw_spans):
        if a >= end:
            spans.append((a, b))
            end = b
    assert labels_from_spans(ids, starts, spans) == scan_labels(ids, starts, spans)
