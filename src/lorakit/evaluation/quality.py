"""Answer quality against a reference answer: ROUGE-L (longest common subsequence) and token F1 (bag of words).

Both compare lowercase alphanumeric tokens, without stemming or stop-word removal, so that a score can be
checked by hand: "The heart pumps blood." and "it pumps blood" share the tokens pumps, blood.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from lorakit.errors import LorakitError

__all__ = ["AnswerScores", "answer_tokens", "token_f1", "rouge_l", "score_answer", "mean_scores"]

_TOKEN = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class AnswerScores:
    rouge_l: float
    token_f1: float


def answer_tokens(text: str) -> list[str]:
    """Lowercase runs of ASCII letters and digits: the tokenization rouge-score uses by default.

    >>> answer_tokens("Call 911 -- NOW!")
    ['call', '911', 'now']
    """
    return _TOKEN.findall(text.lower())


def token_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of token precision and recall, counting repeated tokens at most as often as they match.

    >>> token_f1("blood pressure is high", "high blood pressure")
    0.8571428571428571
    >>> token_f1("", "")
    1.0
    """
    predicted, expected = answer_tokens(prediction), answer_tokens(reference)
    if not predicted or not expected:
        return float(predicted == expected)
    overlap = sum((Counter(predicted) & Counter(expected)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(predicted), overlap / len(expected)
    return 2 * precision * recall / (precision + recall)


@lru_cache(maxsize=1)
def _rouge_scorer():
    try:
        from rouge_score import rouge_scorer, tokenizers
    except ImportError:
        raise LorakitError("Answer quality needs the rouge-score package, which is not installed.",
                           hint="pip install 'lorakit[eval]'  (or: pip install rouge-score)") from None

    # No stemmer: scores stay reproducible by hand and across nltk versions. Passing the tokenizer
    # explicitly also keeps rouge-score from logging "Using default tokenizer" on every run.
    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=tokenizers.DefaultTokenizer(use_stemmer=False))


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure from `rouge-score` (sentence-level LCS, not the summary-level rougeLsum).

    >>> round(rouge_l("the cat sat on the mat", "the cat is on the mat"), 4)
    0.8333
    """
    return _rouge_scorer().score(reference, prediction)["rougeL"].fmeasure


def score_answer(prediction: str, reference: str) -> AnswerScores:
    return AnswerScores(rouge_l=rouge_l(prediction, reference), token_f1=token_f1(prediction, reference))


def mean_scores(scores: Iterable[AnswerScores]) -> AnswerScores | None:
    """Unweighted mean over examples (each question counts once, whatever its length); None when empty."""
    scores = list(scores)
    if not scores:
        return None
    return AnswerScores(
        rouge_l=sum(s.rouge_l for s in scores) / len(scores),
        token_f1=sum(s.token_f1 for s in scores) / len(scores),
    )
