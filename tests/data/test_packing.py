"""Best-fit packing: every example once, no bin over capacity, exact flat rows and restarting positions."""

from __future__ import annotations

import random

import pytest
import torch

from lorakit.data.masking import IGNORE_INDEX
from lorakit.data.packing import collate_packed, pack_best_fit, packing_efficiency
from lorakit.data.render import TokenizedExample


@pytest.mark.parametrize("seed", range(5))
def test_bins_hold_every_example_once_within_capacity(seed):
    rng = random.Random(seed)
    lengths = [min(512, max(1, int(rng.lognormvariate(5, 0.8)))) for _ in range(500)]
    bins = pack_best_fit(lengths, 1024)
    assert sorted(i for group in bins for i in group) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in group) <= 1024 for group in bins)
    # Best fit wastes little room: at most one bin more than the token-count lower bound, plus 2%.
    assert len(bins) <= sum(lengths) / 1024 * 1.02 + 1
    assert packing_efficiency(lengths, bins, 1024) > 0.95


def test_packing_is_deterministic_and_exact():
    assert pack_best_fit([4, 4, 4, 4], 8) == [[0, 1], [2, 3]]
    assert pack_best_fit([3, 3, 2, 7], 8) == [[3], [0, 1, 2]]
    assert pack_best_fit([3, 3, 2, 7], 8) == pack_best_fit([3, 3, 2, 7], 8)


def test_collate_packed_exact_tensors():
    batch = collate_packed(
        [TokenizedExample([11, 12, 13], [-100, 12, 13]), TokenizedExample([21, 22], [21, 22]), TokenizedExample([31], [31])]
    )
    assert batch["input_ids"].tolist() == [[11, 12, 13, 21, 22, 31]]
    # The first label of every example is ignored: nothing inside the example predicts it.
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 12, 13, IGNORE_INDEX, 22, IGNORE_INDEX]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0]]
    assert batch["cu_seq_lens_q"].tolist() == [0, 3, 5, 6] and batch["cu_seq_lens_q"].dtype == torch.int32
    assert batch["max_length_q"] == batch["max_length_k"] == 3
    assert "attention_mask" not in batch  # padding-free: no mask, no pad tokens


def test_labels_are_ignored_or_equal_to_inputs():
    batch = collate_packed([TokenizedExample([5, 6, 7, 8], [-100, -100, 7, 8]), TokenizedExample([9, 10], [9, 10])])
    labels, inputs = batch["labels"][0], batch["input_ids"][0]
    assert ((labels == IGNORE_INDEX) | (labels == inputs)).all()
    assert (labels == IGNORE_INDEX).any() and (labels == inputs).any()


def test_rejects_examples_longer_than_a_bin_and_empty_batches():
    with pytest.raises(ValueError, match="example 1 has 9 tokens"):
        pack_best_fit([2, 9], 8)
    with pytest.raises(ValueError):
        collate_packed([])
