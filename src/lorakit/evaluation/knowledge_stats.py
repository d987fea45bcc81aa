"""How sure a base-vs-tuned accuracy difference is: bootstrap intervals, McNemar's paired test, a verdict.

Both models answer the same questions, so the comparison is paired: only the questions one model got right and
the other wrong (the discordant pairs) carry information about a change. McNemar's test asks whether those
split evenly; with fewer than 25 discordant pairs the exact binomial test is used (the chi-square approximation
is poor there), otherwise the chi-square statistic with continuity correction. Intervals are percentile
bootstraps with a fixed seed, so the same answers always give the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["ALPHA", "EXACT_BELOW", "McNemar", "accuracy_interval", "difference_interval", "mcnemar", "verdict"]

ALPHA = 0.05
EXACT_BELOW = 25  # discordant pairs under which McNemar uses the exact binomial test
_RESAMPLES = 2000
_SEED = 0


@dataclass(frozen=True)
class McNemar:
    base_only: int  # right before fine-tuning, wrong after
    tuned_only: int  # wrong before, right after
    p_value: float
    method: str

    def to_json(self) -> dict:
        return {"base_only_correct": self.base_only, "tuned_only_correct": self.tuned_only,
                "p_value": self.p_value, "method": self.method}


def _resampled_means(values: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(_SEED)
    picks = rng.integers(0, len(values), size=(_RESAMPLES, len(values)))
    return values[picks].mean(axis=1)


def _interval(means: np.ndarray) -> tuple[float, float]:
    low, high = np.quantile(means, [ALPHA / 2, 1 - ALPHA / 2])
    return float(low), float(high)


def accuracy_interval(correct: Sequence[bool]) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the share of True values.

    >>> accuracy_interval([True] * 10)
    (1.0, 1.0)
    """
    if not correct:
        raise ValueError("no answers to bootstrap")
    return _interval(_resampled_means(np.asarray(correct, dtype=float)))


def difference_interval(base: Sequence[bool], tuned: Sequence[bool]) -> tuple[float, float]:
    """95% paired-bootstrap interval of tuned accuracy minus base accuracy (questions resampled together)."""
    if len(base) != len(tuned) or not base:
        raise ValueError("base and tuned must answer the same, non-empty set of questions")
    return _interval(_resampled_means(np.asarray(tuned, dtype=float) - np.asarray(base, dtype=float)))


def mcnemar(base: Sequence[bool], tuned: Sequence[bool]) -> McNemar:
    """McNemar's test on paired answers.

    >>> mcnemar([True] * 8 + [False] * 2, [False] * 8 + [True] * 2).p_value  # 8 lost vs 2 gained: 2 * P(X <= 2)
    0.109375
    >>> mcnemar([True, False], [True, False]).p_value
    1.0
    """
    if len(base) != len(tuned):
        raise ValueError("base and tuned must answer the same questions")
    base_only = sum(1 for b, t in zip(base, tuned) if b and not t)
    tuned_only = sum(1 for b, t in zip(base, tuned) if t and not b)
    discordant = base_only + tuned_only
    if discordant == 0:
        return McNemar(0, 0, 1.0, "no discordant pairs")
    if discordant < EXACT_BELOW:
        tail = sum(math.comb(discordant, k) for k in range(min(base_only, tuned_only) + 1)) / 2 ** discordant
        return McNemar(base_only, tuned_only, min(1.0, 2 * tail), "exact binomial")
    statistic = (abs(base_only - tuned_only) - 1) ** 2 / discordant
    return McNemar(base_only, tuned_only, math.erfc(math.sqrt(statistic / 2)), "chi-square, continuity corrected")


def verdict(test: McNemar) -> str:
    """'gained', 'lost' or 'no detectable change' (McNemar p >= 0.05, which is not evidence of no change)."""
    if test.p_value >= ALPHA or test.base_only == test.tuned_only:
        return "no detectable change"
    return "gained" if test.tuned_only > test.base_only else "lost"
