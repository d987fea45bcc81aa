"""Intervals, McNemar and the verdict, and the controls: what a constant and a random answerer score."""

from __future__ import annotations

import math
import random

import pytest

from lorakit.evaluation.knowledge import ScoredItem
from lorakit.evaluation.knowledge_eval import controls, summarize_benchmark
from lorakit.evaluation.knowledge_items import load_benchmark
from lorakit.evaluation.knowledge_stats import accuracy_interval, difference_interval, mcnemar, verdict


def test_mcnemar_exact_for_few_discordant_pairs():
    # 9 lost, 1 gained: two-sided exact p = 2 * (1 + 10) / 1024
    test = mcnemar([True] * 9 + [False] + [True] * 5, [False] * 9 + [True] + [True] * 5)
    assert (test.base_only, test.tuned_only, test.method) == (9, 1, "exact binomial")
    assert test.p_value == pytest.approx(22 / 1024)
    assert verdict(test) == "lost"


def test_mcnemar_chi_square_for_many_discordant_pairs():
    test = mcnemar([False] * 40 + [True] * 10, [True] * 40 + [False] * 10)
    statistic = (abs(10 - 40) - 1) ** 2 / 50
    assert test.method == "chi-square, continuity corrected"
    assert test.p_value == pytest.approx(math.erfc(math.sqrt(statistic / 2)))
    assert verdict(test) == "gained"


def test_balanced_or_rare_changes_are_no_detectable_change():
    assert verdict(mcnemar([True] * 5 + [False] * 5, [False] * 5 + [True] * 5)) == "no detectable change"
    assert verdict(mcnemar([True, True, False], [True, False, False])) == "no detectable change"  # p = 1.0


def test_intervals_hold_the_estimate_and_are_reproducible():
    correct = [i % 3 == 0 for i in range(300)]  # 100 of 300
    low, high = accuracy_interval(correct)
    assert low < 1 / 3 < high and 0.05 < high - low < 0.15
    assert accuracy_interval(correct) == (low, high)
    d_low, d_high = difference_interval(correct, correct)
    assert d_low == d_high == 0.0


def _answering(items, pick) -> list[ScoredItem]:
    """A fake model that puts all its probability on the option `pick(item)` returns."""
    return [ScoredItem(item, tuple(0.0 if k == pick(item) else -20.0 for k in range(len(item.choices))))
            for item in items]


def test_a_constant_answer_scores_the_share_of_its_letter():
    items = load_benchmark("mmlu_medical")
    section = summarize_benchmark("mmlu_medical", _answering(items, lambda i: 0), _answering(items, lambda i: 0))
    assert section["tuned"]["accuracy"] == section["controls"]["always_a"] == pytest.approx(235 / 1089)  # counted in the source CSVs
    assert section["verdict"] == "no detectable change" and section["mcnemar"]["p_value"] == 1.0
    pubmedqa = controls(load_benchmark("pubmedqa"))
    assert pubmedqa["always_a"] == pubmedqa["best_constant"] == 0.552 and pubmedqa["chance"] == pytest.approx(1 / 3)


def test_a_uniform_random_model_scores_chance_within_its_interval():
    items = load_benchmark("mmlu_medical")
    rng = random.Random(1)
    section = summarize_benchmark("mmlu_medical", _answering(items, lambda i: rng.randrange(4)),
                                  _answering(items, lambda i: rng.randrange(4)))
    for which in ("base", "tuned"):
        low, high = section[which]["ci95"]
        assert low < section["controls"]["chance"] == 0.25 < high
    assert section["verdict"] == "no detectable change"


def test_an_oracle_against_a_constant_is_gained_and_the_reverse_lost():
    items = load_benchmark("mmlu_guard")
    oracle, constant = _answering(items, lambda i: i.answer), _answering(items, lambda i: 0)
    gained = summarize_benchmark("mmlu_guard", constant, oracle)
    assert gained["tuned"]["accuracy"] == 1.0 and gained["verdict"] == "gained"
    assert gained["mcnemar"]["tuned_only_correct"] == sum(i.answer != 0 for i in items)
    lost = summarize_benchmark("mmlu_guard", oracle, constant)
    assert lost["verdict"] == "lost" and lost["difference"]["ci95"][1] < 0
