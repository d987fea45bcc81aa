"""PairLayout's bound over the run's own micro-batches (data/preference_batch.py) is exactly the epoch-by-epoch walk
it replaced, kept below as `_walked_bound`, on random small runs; and it stays fast: a tiny data set over a long run
(the case that took seconds before training started) draws each epoch's order once for every bound the planner asks,
and stops once no micro-batch can hold more."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch

from lorakit.config import RunConfig
from lorakit.data import preference_batch
from lorakit.data.preference_batch import PairLayout
from lorakit.training.batches import epoch_permutation, run_pair_layout


def _walked_bound(layout: PairLayout, pairs: int, size: int) -> tuple[int, int]:
    """The bound as lorakit computed it until session 12: one epoch's order at a time (the reference, kept as it was)."""
    sizes = torch.tensor([layout.positions, layout.keys], dtype=torch.int64)
    runs, per_epoch = max(layout.micro_batches, 1), -(-len(layout.positions) // size)
    best = torch.zeros(2, dtype=torch.int64)
    for epoch in range(-(-runs // per_epoch)):
        order = torch.as_tensor(layout.order(epoch), dtype=torch.int64)
        order = order[:min(per_epoch, runs - epoch * per_epoch) * size]
        sums = torch.nn.functional.pad(sizes[:, order].cumsum(1), (1, 0))
        groups = torch.arange(0, len(order), size)
        starts = groups[:, None] + torch.arange(0, size, pairs)[None, :]
        ends = torch.clamp(groups + size, max=len(order))[:, None].expand_as(starts)
        inside = starts < ends
        starts, ends = starts[inside], torch.minimum(starts + pairs, ends)[inside]
        best = torch.maximum(best, (sums[:, ends] - sums[:, starts]).amax(1))
    return int(best[0]), int(best[1])


def _config(seed: int, batch_size: int, steps: int, accumulation: int) -> RunConfig:
    return RunConfig.model_validate({
        "seed": seed, "data": {"train_file": "x.jsonl"},
        "training": {"method": "dpo", "batch_size": batch_size, "max_steps": steps,
                     "gradient_accumulation_steps": accumulation}})


def _random_layout(rng: random.Random, count: int) -> PairLayout:
    positions = tuple(rng.randint(1, 60) for _ in range(count))
    return PairLayout(positions, tuple(p + rng.randint(0, 40) for p in positions))


@pytest.mark.parametrize(("first_block", "block_elements"), [(256, 1 << 20), (2, 64), (1, 16)])
def test_the_bound_is_the_walked_bound_on_random_runs(first_block, block_elements, monkeypatch):
    """Random pair counts, sizes, run lengths and seeds (the run's real order, training/batches.run_pair_layout), each
    micro-batch size asked in a random order of the same layout (the order cache must not leak between sizes); and
    with blocks that grow from a few epochs, or of one, as a data set of over a million pairs is bounded."""
    assert (preference_batch._FIRST_BLOCK_EPOCHS, preference_batch._BLOCK_ELEMENTS) == (256, 1 << 20)
    monkeypatch.setattr(preference_batch, "_FIRST_BLOCK_EPOCHS", first_block)
    monkeypatch.setattr(preference_batch, "_BLOCK_ELEMENTS", block_elements)
    rng = random.Random(12)
    for _ in range(30):
        count = rng.randint(1, 13)
        config = _config(rng.randint(0, 2**32 - 1), rng.randint(1, count + 2), rng.randint(1, 40), rng.randint(1, 3))
        layout = run_pair_layout(_random_layout(rng, count), config)
        asks = [(pairs, size) for size in range(1, count + 3) for pairs in range(1, size + 1)]
        for pairs, size in rng.sample(asks, min(len(asks), 6)):
            assert layout.micro_batch(pairs, cut_from=size) == _walked_bound(layout, pairs, size), (count, pairs, size)


def test_the_last_epoch_counts_only_the_micro_batches_the_run_reaches():
    """5 pairs in 2s: an epoch is [a, b] [c, d] [e]; a run of 4 micro-batches reaches only the first of the second
    epoch. The largest pair (100) sits last in epoch 1's order, so it counts only where the run reaches it."""
    orders = [[0, 1, 2, 3, 4], [0, 1, 2, 3, 4]]
    layout = PairLayout((1, 2, 3, 4, 100), (1, 2, 3, 4, 100), order=lambda epoch: orders[epoch], micro_batches=2)
    assert layout.micro_batch(2) == (7, 7) == _walked_bound(layout, 2, 2)  # [0, 1], [2, 3]: 100 never reached
    reached = replace(layout, micro_batches=3)
    assert reached.micro_batch(2) == (100, 100) == _walked_bound(reached, 2, 2)  # [4] alone
    assert replace(layout, micro_batches=4).micro_batch(1, cut_from=2) == (100, 100)


def test_a_tiny_data_set_over_a_long_run_draws_each_order_once_and_stops_at_the_ceiling():
    """20 pairs x 2,000 steps x 16 accumulated micro-batches (the run session 11 saw take seconds to plan): every size
    the planner tries (1 to 16) together draws no epoch's order twice, and micro-batches of one pair stop after the
    first block of epochs, where the largest pair has been seen (it is in every epoch)."""
    rng = random.Random(0)
    base = _random_layout(rng, 20)
    config = _config(42, 4, 2000, 16)
    drawn = []

    def counted(epoch: int) -> torch.Tensor:
        drawn.append(epoch)
        return epoch_permutation(20, config.seed, epoch)

    layout = replace(run_pair_layout(base, config), order=counted)
    assert layout.micro_batch(1) == (max(base.positions), max(base.keys))
    assert len(drawn) == 256  # the first block: the largest pair is in epoch 0 already
    for size in (2, 4, 8, 16):
        layout.micro_batch(size)
    assert len(drawn) == len(set(drawn)) <= 16_000  # at most the 2,000 x 16 / 2 epochs that micro-batches of 16 walk


def test_the_bound_over_many_epochs_is_the_walked_bound():
    """20 pairs in micro-batches of 4 over 6,400 micro-batches (1,280 epochs), both from the same drawn orders.
    How much faster it is lives in bench/preference_plan_speed.py, not in a timed test."""
    rng = random.Random(1)
    base = _random_layout(rng, 20)
    orders = [epoch_permutation(20, 7, epoch) for epoch in range(1280)]
    layout = PairLayout(base.positions, base.keys, order=orders.__getitem__, micro_batches=6400)
    walked = _walked_bound(layout, 4, 4)
    drawn = []
    counted = replace(layout, order=lambda epoch: drawn.append(epoch) or orders[epoch])
    assert counted.micro_batch(4) == walked
    # the 4 largest pairs first meet after the first block of 256 epochs: the growing blocks are what is compared
    assert drawn == list(range(256 + 512)) and walked == layout.micro_batch_any_order(4)
    assert _walked_bound(replace(layout, micro_batches=5 * 256), 4, 4) < walked


def test_a_resumed_run_sees_the_bound_of_the_uninterrupted_one():
    """A resumed session rebuilds the layout from the same config (training/session.build_session): whatever the
    planner asked the first session, and in what order, the fresh layout bounds every size the same."""
    rng = random.Random(3)
    base = _random_layout(rng, 9)
    config = _config(5, 4, 30, 2)
    first = run_pair_layout(base, config)
    asked = [first.micro_batch(size) for size in (8, 1, 4, 2)] + [first.micro_batch(2, cut_from=4)]
    resumed = run_pair_layout(base, config)
    assert [resumed.micro_batch(size) for size in (8, 1, 4, 2)] + [resumed.micro_batch(2, cut_from=4)] == asked
    assert asked == [_walked_bound(first, size, size) for size in (8, 1, 4, 2)] + [_walked_bound(first, 2, 4)]
