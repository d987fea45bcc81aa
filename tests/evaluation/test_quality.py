"""ROUGE-L and token F1 against values computed by hand."""

import pytest

from lorakit.evaluation.quality import AnswerScores, answer_tokens, mean_scores, rouge_l, score_answer, token_f1


def test_tokens_are_lowercase_alphanumeric_runs():
    assert answer_tokens("Call 911 -- NOW! Don't wait.") == ["call", "911", "now", "don", "t", "wait"]


def test_token_f1_by_hand():
    # prediction: the heart pumps blood (4 tokens); reference: it pumps blood (3); shared: pumps, blood.
    # precision 2/4, recall 2/3, F1 = 2 * (1/2) * (2/3) / (1/2 + 2/3) = 4/7.
    assert token_f1("The heart pumps blood.", "it pumps blood") == pytest.approx(4 / 7)


def test_token_f1_counts_a_repeated_token_only_as_often_as_the_reference_has_it():
    # overlap min(3, 1) = 1: precision 1/3, recall 1/2, F1 = 2 * (1/6) / (5/6) = 0.4.
    assert token_f1("blood blood blood", "blood pressure") == pytest.approx(0.4)


def test_token_f1_edge_cases():
    assert token_f1("", "") == 1.0
    assert token_f1("", "blood") == 0.0
    assert token_f1("kidneys", "blood") == 0.0
    assert token_f1("Call 911!", "call 911") == 1.0


def test_rouge_l_rewards_order_and_token_f1_does_not():
    # LCS(call emergency services now, call the emergency services) = call emergency services = 3 tokens:
    # precision 3/4, recall 3/4, F = 0.75.
    assert rouge_l("call emergency services now", "call the emergency services") == pytest.approx(0.75)
    # Reversed order: the LCS is one token, so precision = recall = 1/3; the bag of words is identical.
    assert rouge_l("services emergency call", "call emergency services") == pytest.approx(1 / 3)
    assert token_f1("services emergency call", "call emergency services") == pytest.approx(1.0)


def test_rouge_l_unequal_lengths():
    # LCS(a b c, a x b y c z) = a b c = 3: precision 3/3, recall 3/6, F = 2 * 1 * 0.5 / 1.5 = 2/3.
    assert rouge_l("a b c", "a x b y c z") == pytest.approx(2 / 3)


def test_score_and_mean():
    assert score_answer("pumps blood", "pumps blood") == AnswerScores(1.0, 1.0)
    mean = mean_scores([AnswerScores(1.0, 0.5), AnswerScores(0.0, 0.25)])
    assert mean == AnswerScores(0.5, 0.375)
    assert mean_scores([]) is None
