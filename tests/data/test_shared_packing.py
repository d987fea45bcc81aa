"""Packed SFT rows with the shared prefix computed once (data/shared_packing.py): the exact layout, predicting
positions and targets of a hand example, the root choice, and the planner's bound on a bin's computed positions."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from lorakit.data.packing import collate_packed, pack_best_fit
from lorakit.data.render import TokenizedExample
from lorakit.data.shared_packing import collate_packed_shared, prefix_sharing, sharing_root
from lorakit.data.shared_prefix import common_prefix_length
from lorakit.training.batches import batch_tokens

# S = [1, 2, 3] is the "system prompt"; D duplicates B; E shares only the first token ("the template").
A = TokenizedExample([1, 2, 3, 4, 5], [-100, -100, -100, 4, 5])
B = TokenizedExample([1, 2, 3, 6, 7, 8], [-100, -100, -100, -100, 7, 8])
D = TokenizedExample([1, 2, 3, 6, 7, 8], [-100, -100, -100, -100, 7, 8])
E = TokenizedExample([1, 9, 10], [-100, 9, 10])


def test_hand_example_layout_positions_and_targets():
    batch = collate_packed_shared([A, B, D, E])
    # Root: B (shares 3 with A, 6 with D, 1 with E: 10, more than A's 3 + 3 + 1 or D's equal 10 later in the bin).
    # Flat row: [B whole][A after its 3 shared][D: nothing of its own][E after its 1 shared].
    assert batch["input_ids"].tolist() == [[1, 2, 3, 6, 7, 8, 4, 5, 9, 10]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5, 3, 4, 1, 2]]
    assert batch["cu_seq_lens_q"].tolist() == [0, 6, 8, 10]
    assert batch["kv_index"].tolist() == [0, 1, 2, 3, 4, 5, 0, 1, 2, 6, 7, 0, 8, 9]
    assert batch["cu_seq_lens_k"].tolist() == [0, 6, 11, 14]
    # B: 7 <- pos 3 (its 6), 8 <- pos 4. A: 4 <- pos 2 (the root's 3: inside the shared prefix), 5 <- pos 6.
    # D: predicted entirely from the root's positions, 3 and 4 again. E: 9 <- pos 0 (the root's 1), 10 <- pos 8.
    assert batch["predicting_positions"].tolist() == [3, 4, 2, 6, 3, 4, 0, 8]
    assert batch["predicted_labels"].tolist() == [7, 8, 4, 5, 7, 8, 9, 10]
    # what tokens/s counts: the examples' real tokens, as the packed row holds them
    packed = collate_packed([A, B, D, E])
    assert batch_tokens(batch) == batch_tokens(packed) == 20
    assert len(batch["predicted_labels"]) == int((packed["labels"] != -100).sum())


def test_root_maximises_the_shared_tokens_whatever_the_bin_order():
    rows = [A.input_ids, B.input_ids, D.input_ids, E.input_ids]
    for order in itertools.permutations(range(4)):
        picked = [rows[i] for i in order]
        root = sharing_root(picked)
        total = sum(_shared(picked[root], row) for i, row in enumerate(picked) if i != root)
        assert total == max(sum(_shared(r, row) for j, row in enumerate(picked) if j != i) for i, r in enumerate(picked))
        assert order[root] in (1, 2) and root == min(order.index(1), order.index(2))  # B or D, the earlier


def _shared(a, b) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def test_planner_bound_covers_every_bin():
    examples = [A, B, D, E, TokenizedExample([1, 2, 3, 11], [-100, -100, -100, 11])]
    sharing = prefix_sharing(examples)
    for capacity in (6, 9, 12, 30):
        computed = [collate_packed_shared([examples[i] for i in group])["input_ids"].shape[1]
                    for group in pack_best_fit(sharing.lengths, capacity)]
        assert max(computed) <= sharing.bin_positions(capacity)
    # One bin of all 24 tokens computes 11 (root B; A and the last share 3 with it, D 6, E 1); the bound sees each
    # example's prefix with A only (D's 3, not 6) and counts the largest of them (A's own 5) once: 24 - 10 = 14.
    assert collate_packed_shared(examples)["input_ids"].shape[1] == 11
    assert sharing.bin_positions(30) == 14


def _quadratic_sharing_root(rows) -> int:
    """sharing_root as it was before session 12: each row's running minima summed directly, O(n^2) per bin."""
    order = sorted(range(len(rows)), key=lambda i: (list(rows[i]), i))
    adjacent = [common_prefix_length(rows[a], rows[b]) for a, b in zip(order, order[1:])]
    best, best_total = 0, -1
    for place, index in enumerate(order):
        total, shared = 0, None
        for step in range(place - 1, -1, -1):  # rows sorted before it: running minimum of adjacent prefixes
            shared = adjacent[step] if shared is None else min(shared, adjacent[step])
            total += shared
        shared = None
        for step in range(place, len(adjacent)):  # and after it
            shared = adjacent[step] if shared is None else min(shared, adjacent[step])
            total += shared
        if total > best_total or (total == best_total and index < best):
            best, best_total = index, total
    return best


# Bins of up to 40 rows over a 3-token alphabet, so that rows share long prefixes, repeat, and tie.
BINS = st.lists(st.lists(st.integers(0, 2), min_size=1, max_size=12), min_size=1, max_size=40)


@settings(max_examples=300, deadline=None)
@given(rows=BINS)
def test_root_is_the_quadratic_search_s_on_random_bins(rows):
    assert sharing_root(rows) == _quadratic_sharing_root(rows)


def test_root_of_a_bin_with_a_shared_system_prompt_is_the_quadratic_search_s():
    """A bin like lorakit's real ones: every row starts with the same ~100-token system prompt."""
    import random

    generator = random.Random(12)
    prompt = [generator.randrange(50_000) for _ in range(100)]
    for _ in range(20):
        rows = [prompt + [generator.randrange(4) for _ in range(generator.randrange(1, 30))]
                for _ in range(generator.randrange(1, 60))]
        assert sharing_root(rows) == _quadratic_sharing_root(rows)
