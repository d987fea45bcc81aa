"""Cohen's kappa on tables whose value is known by hand."""

from __future__ import annotations

import pytest

from lorakit.evaluation.agreement import AgreementTable, agreement_table, cohen_kappa


def test_perfect_agreement_is_one():
    assert cohen_kappa(AgreementTable(both_pass=7, both_fail=3)) == 1.0


def test_agreement_no_better_than_chance_is_zero():
    # Each grader passes half the answers, independently: they agree on half, exactly what chance gives.
    table = AgreementTable(both_pass=25, both_fail=25, rules_pass_judge_fail=25, rules_fail_judge_pass=25)
    assert (table.observed, table.expected, cohen_kappa(table)) == (0.5, 0.5, 0.0)


def test_high_raw_agreement_can_be_mostly_chance():
    # Both graders pass 90% of answers: 82% raw agreement, 82% expected by chance, so kappa is 0.
    table = AgreementTable(both_pass=81, both_fail=1, rules_pass_judge_fail=9, rules_fail_judge_pass=9)
    assert table.observed == 0.82 and table.expected == pytest.approx(0.82) and cohen_kappa(table) == pytest.approx(0.0)


def test_textbook_example():
    # Wikipedia's "Cohen's kappa" worked example: 20 yes/yes, 15 no/no, 5 and 10 split; po 0.7, pe 0.5, kappa 0.4.
    table = AgreementTable(both_pass=20, both_fail=15, rules_pass_judge_fail=5, rules_fail_judge_pass=10)
    assert (table.observed, table.expected, cohen_kappa(table)) == (0.7, 0.5, 0.4)


def test_systematic_disagreement_is_minus_one():
    assert cohen_kappa(AgreementTable(rules_pass_judge_fail=4, rules_fail_judge_pass=4)) == -1.0


def test_undefined_without_answers_or_with_one_shared_verdict():
    assert cohen_kappa(AgreementTable()) is None
    assert cohen_kappa(AgreementTable(both_fail=12)) is None
    assert AgreementTable(both_fail=12).to_json()["observed_agreement"] == 1.0


def test_table_counts_and_json():
    table = agreement_table([(True, True), (True, False), (False, True), (False, True), (False, False)])
    assert table.to_json() == {"both_pass": 1, "both_fail": 1, "rules_pass_judge_fail": 1, "rules_fail_judge_pass": 2,
                               "total": 5, "observed_agreement": 0.4, "chance_agreement": 0.48,
                               "kappa": pytest.approx(-0.1538461538)}
