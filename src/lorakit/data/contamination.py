"""Training rows that contain evaluation text: benchmark questions or safety probes, found by 13-word overlap.

The rule is lm-evaluation-harness's decontamination rule (lm_eval/decontamination/janitor.py): text is
lower-cased (ASCII), stripped of ASCII punctuation and split on whitespace, and a row overlaps a reference when
they share any sequence of 13 words. A reference shorter than 13 words never matches under that rule; safety
probes are short prompts, so a probe of fewer than 13 words matches when its whole text appears in a row.
Trained-on benchmark items inflate knowledge scores (a warning); a trained-on safety probe makes its safety
score meaningless (an error).
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from lorakit.data.conversation import Conversation
from lorakit.data.issues import Issue

__all__ = ["NGRAM_WORDS", "Reference", "normalized_words", "ContaminationIndex"]

NGRAM_WORDS = 13
_NORMALIZE = str.maketrans(string.ascii_uppercase, string.ascii_lowercase, string.punctuation)
_LISTED = 3


@dataclass(frozen=True)
class Reference:
    id: str  # e.g. "mmlu/anatomy/12" or "dosing-006"
    source: str  # what it belongs to, for people: "MMLU medical", "safety probes"
    text: str
    is_safety_probe: bool = False


def normalized_words(text: str) -> list[str]:
    """lm-eval's normalization: ASCII lower case, ASCII punctuation deleted, split on whitespace.

    >>> normalized_words("Don't STOP warfarin, call 911!")
    ['dont', 'stop', 'warfarin', 'call', '911']
    """
    return text.translate(_NORMALIZE).split()


def _ngrams(words: Sequence[str], size: int) -> Iterator[str]:
    return (" ".join(words[i:i + size]) for i in range(len(words) - size + 1))


class ContaminationIndex:
    """Word n-grams of reference texts -> the references that contain them; `issues` checks one row."""

    def __init__(self, references: Iterable[Reference]):
        self.references = list(references)
        self._owners: dict[int, dict[str, list[int]]] = {}  # n-gram size -> n-gram -> reference indices
        for index, reference in enumerate(self.references):
            words = normalized_words(reference.text)
            size = NGRAM_WORDS if len(words) >= NGRAM_WORDS or not reference.is_safety_probe else len(words)
            table = self._owners.setdefault(size, {})
            for gram in dict.fromkeys(_ngrams(words, size)):
                table.setdefault(gram, []).append(index)

    def matches(self, text: str) -> list[Reference]:
        """The references sharing an n-gram with `text`, in reference order."""
        words = normalized_words(text)
        found: set[int] = set()
        for size, table in self._owners.items():
            if size == 0:
                continue
            for gram in _ngrams(words, size):
                found.update(table.get(gram, ()))
        return [self.references[i] for i in sorted(found)]

    def issues(self, conversation: Conversation) -> list[Issue]:
        """At most two issues for one row: an error for safety probes it contains, a warning for benchmark items."""
        found = dict.fromkeys(r for m in conversation.messages for r in self.matches(m.content))
        probes = [r for r in found if r.is_safety_probe]
        items = [r for r in found if not r.is_safety_probe]
        issues = []
        if probes:
            issues.append(Issue(conversation.source, conversation.line, "error", "contains-safety-probe",
                                f"contains the text of {_listed(probes)} (13-word overlap, as lm-eval checks)",
                                hint="Remove this row: a model trained on a probe passes it by memory, so its safety "
                                     "score would no longer say anything."))
        if items:
            issues.append(Issue(conversation.source, conversation.line, "warning", "contains-benchmark-item",
                                f"shares a 13-word sequence with {_listed(items)}",
                                hint="Remove this row, or read the knowledge scores of the benchmark as inflated: "
                                     "the model may recall the item instead of knowing the answer."))
        return issues


def _listed(references: list[Reference]) -> str:
    by_source: dict[str, list[str]] = {}
    for reference in references:
        by_source.setdefault(reference.source, []).append(reference.id)
    parts = []
    for source, ids in by_source.items():
        more = f" and {len(ids) - _LISTED} more" if len(ids) > _LISTED else ""
        parts.append(f"{source} {', '.join(ids[:_LISTED])}{more}")
    return "; ".join(parts)
