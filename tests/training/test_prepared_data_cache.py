"""PreparedData walks its examples once for each planner summary: an out-of-memory re-plan (plan/oom.py) asks for
them again, and the data does not change between re-plans."""

from __future__ import annotations

from lorakit.data.render import TokenizedExample
from lorakit.data.shared_packing import PrefixSharing, prefix_sharing
from lorakit.data.splits import Splits
from lorakit.training import dataset


def _prepared() -> dataset.PreparedData:
    train = [TokenizedExample([1, 2, 3], [-100, 2, 3]), TokenizedExample([1, 2, 5, 6], [-100, -100, 5, 6])]
    held_out = [TokenizedExample([1, 2, 7, 8, 9], [-100, -100, 7, 8, 9])]
    return dataset.PreparedData(splits=Splits(train=train, validation=held_out, test=[]), data_sha256="0" * 64,
                                truncated=0, without_targets=0)


def test_prefix_sharing_walks_the_train_examples_once_however_often_it_is_asked(monkeypatch):
    walks = []

    def counting_prefix_sharing(examples):
        walks.append(len(examples))
        return prefix_sharing(examples)

    monkeypatch.setattr(dataset, "prefix_sharing", counting_prefix_sharing)
    data = _prepared()
    answers = [data.prefix_sharing for _ in range(3)]  # the session's plan, then two re-plans
    assert answers == [PrefixSharing(lengths=(3, 4), anchor_prefixes=(3, 2))] * 3
    assert walks == [2]


def test_longest_example_walks_the_splits_once_however_often_it_is_asked(monkeypatch):
    walks = []

    def counting_example_length(example):
        walks.append(example)
        return len(example.input_ids)

    monkeypatch.setattr(dataset, "example_length", counting_example_length)
    data = _prepared()
    assert [data.longest_example for _ in range(3)] == [5, 5, 5]
    assert len(walks) == 3  # two train examples and one validation example, once
