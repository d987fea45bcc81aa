"""The shared-prefix layout's exact indices: answers that are prefixes of each other, a row wholly inside its
parent's prefix, and the SFT shape [S X1][X2][X3] (the module's doctest holds the answers-share-a-word case)."""

from __future__ import annotations

import pytest

from lorakit.data.render import TokenizedExample
from lorakit.data.shared_prefix import collate_shared_prefix, layout_segments

ATTENTION_KEYS = ("input_ids", "position_ids", "cu_seq_lens_q", "kv_index", "cu_seq_lens_k")


def _lists(batch: dict, keys=ATTENTION_KEYS) -> tuple:
    return tuple(batch[key].tolist() for key in keys)


def test_the_chosen_answer_is_a_prefix_of_the_rejected_one():
    # chosen = P + [7] where P = [1, 2]: the whole chosen row is shared, the rejected row adds [8, 9]
    chosen, rejected = TokenizedExample([1, 2, 7], [-100, -100, 7]), TokenizedExample([1, 2, 7, 8, 9], [-100, -100, 7, 8, 9])
    batch = collate_shared_prefix([chosen, rejected], [None, 0])
    assert _lists(batch) == ([[1, 2, 7, 8, 9]], [[0, 1, 2, 3, 4]], [0, 3, 5], [0, 1, 2, 0, 1, 2, 3, 4], [0, 3, 8])
    assert (batch["max_length_q"], batch["max_length_k"]) == (3, 5)
    # rejected: 7 is predicted by token 2 (shared, flat 1); 8 by its token 7 (shared, flat 2); 9 by its own 8 (flat 3)
    assert _lists(batch, ("predicting_positions", "predicted_labels", "label_rows")) == (
        [1, 1, 2, 3], [7, 7, 8, 9], [0, 1, 1, 1])
    assert batch["label_counts"].tolist() == [1, 3] and batch["row_tokens"] == 8


def test_a_row_wholly_inside_its_parents_prefix_computes_nothing_of_its_own():
    chosen, rejected = TokenizedExample([1, 2, 7, 8], [-100, -100, 7, 8]), TokenizedExample([1, 2, 7], [-100, -100, 7])
    batch = collate_shared_prefix([chosen, rejected], [None, 0])
    assert _lists(batch) == ([[1, 2, 7, 8]], [[0, 1, 2, 3]], [0, 4], [0, 1, 2, 3], [0, 4])
    assert _lists(batch, ("predicting_positions", "predicted_labels", "label_rows")) == ([1, 2, 1], [7, 8, 7], [0, 0, 1])


def test_sft_rows_sharing_a_system_prompt_become_one_root_and_children():
    system = [5, 6, 7]
    rows = [TokenizedExample(system + [10, 11], [-100, -100, -100, 10, 11]),
            TokenizedExample(system + [20], [-100, -100, -100, 20]),
            TokenizedExample(system + [30, 31, 32], [-100, -100, -100, 30, 31, 32])]
    batch = collate_shared_prefix(rows, [None, 0, 0])
    assert _lists(batch) == (
        [[5, 6, 7, 10, 11, 20, 30, 31, 32]],
        [[0, 1, 2, 3, 4, 3, 3, 4, 5]],
        [0, 5, 6, 9],
        [0, 1, 2, 3, 4, 0, 1, 2, 5, 0, 1, 2, 6, 7, 8],
        [0, 5, 9, 15],
    )
    assert batch["predicting_positions"].tolist() == [2, 3, 2, 2, 6, 7]


def test_a_parent_must_be_an_earlier_root_row():
    with pytest.raises(ValueError, match="row 1's parent must be an earlier row without a parent, got 1"):
        layout_segments([[1], [1]], [None, 1])
    with pytest.raises(ValueError, match="row 2's parent must be an earlier row without a parent, got 1"):
        layout_segments([[1], [1], [1]], [None, 0, 1])
