"""How often two graders agree on pass / fail, beyond what chance alone would give: Cohen's kappa on a 2x2 table.

Used to compare the judge model with the rules (evaluation/judge.py). Raw agreement flatters graders that say
"pass" to almost everything: two such graders agree on most answers by chance. Kappa subtracts that chance
agreement (what the two graders' own pass rates would give if they graded independently) and scales the rest,
so 1 is perfect agreement, 0 is no better than chance, and below 0 is worse than chance.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["AgreementTable", "agreement_table", "cohen_kappa"]


@dataclass(frozen=True)
class AgreementTable:
    """Counts of answers by (rules verdict, judge verdict)."""

    both_pass: int = 0
    both_fail: int = 0
    rules_pass_judge_fail: int = 0
    rules_fail_judge_pass: int = 0

    @property
    def total(self) -> int:
        return self.both_pass + self.both_fail + self.rules_pass_judge_fail + self.rules_fail_judge_pass

    @property
    def observed(self) -> float | None:
        """The share of answers both graders gave the same verdict (None without answers)."""
        return (self.both_pass + self.both_fail) / self.total if self.total else None

    @property
    def expected(self) -> float | None:
        """The agreement two independent graders with these pass rates would reach by chance."""
        if not self.total:
            return None
        rules_pass = (self.both_pass + self.rules_pass_judge_fail) / self.total
        judge_pass = (self.both_pass + self.rules_fail_judge_pass) / self.total
        return rules_pass * judge_pass + (1 - rules_pass) * (1 - judge_pass)

    def to_json(self) -> dict:
        return {"both_pass": self.both_pass, "both_fail": self.both_fail,
                "rules_pass_judge_fail": self.rules_pass_judge_fail,
                "rules_fail_judge_pass": self.rules_fail_judge_pass, "total": self.total,
                "observed_agreement": self.observed, "chance_agreement": self.expected, "kappa": cohen_kappa(self)}


def agreement_table(verdicts: Iterable[tuple[bool, bool]]) -> AgreementTable:
    """Count (rules passed, judge passed) pairs.

    >>> agreement_table([(True, True), (True, False), (False, False), (False, False)])
    AgreementTable(both_pass=1, both_fail=2, rules_pass_judge_fail=1, rules_fail_judge_pass=0)
    """
    counts = {(True, True): 0, (False, False): 0, (True, False): 0, (False, True): 0}
    for rules, judge in verdicts:
        counts[(bool(rules), bool(judge))] += 1
    return AgreementTable(counts[(True, True)], counts[(False, False)], counts[(True, False)], counts[(False, True)])


def cohen_kappa(table: AgreementTable) -> float | None:
    """(observed - chance) / (1 - chance); None when it is undefined: no answers, or both graders gave one and the
    same verdict to every answer (chance agreement is then 1, and 0 / 0 says nothing).

    >>> cohen_kappa(AgreementTable(both_pass=20, both_fail=15, rules_pass_judge_fail=5, rules_fail_judge_pass=10))
    0.4
    >>> cohen_kappa(AgreementTable(both_pass=3)) is None
    True
    """
    observed, expected = table.observed, table.expected
    if observed is None or expected is None or expected == 1.0:
        return None
    return round((observed - expected) / (1 - expected), 10)
