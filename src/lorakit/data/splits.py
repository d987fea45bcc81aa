"""Deterministic train/validation/test split from the seed.

Examples are ordered by a seeded hash of their content, so the split does not depend on file order and
identical examples always land on the same side (no leakage between train and test). Examples that give the
same answer to different questions form one group that is hashed and placed as a whole: a test answer that
was also a training target would inflate every overlap metric (ROUGE-L) without showing any skill.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Generic, TypeVar

from lorakit.data.duplicates import answer_text
from lorakit.data.records import Conversation

__all__ = ["Splits", "split_conversations"]

T = TypeVar("T")


@dataclass(frozen=True)
class Splits(Generic[T]):
    train: list[T]
    validation: list[T]
    test: list[T]

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "validation": len(self.validation), "test": len(self.test)}


def _seeded_hash(key: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}\x00{key}".encode()).hexdigest()


def _group_keys(conversations: list[Conversation]) -> list[str]:
    """Each conversation's group: the smallest content key among the conversations sharing its answer (for a
    conversation with an answer of its own, its own content key, so such splits are what they always were)."""
    smallest: dict[str, str] = {}
    for conversation in conversations:
        answer, key = answer_text(conversation), conversation.content_key()
        smallest[answer] = min(smallest.get(answer, key), key)
    return [smallest[answer_text(conversation)] for conversation in conversations]


def _boundary(keys: list[str], index: int, lowest: int = 0) -> int:
    """Move a cut to the nearer edge of the group (equal keys) it would split, never below `lowest + 1`.

    >>> _boundary(list("aabbbbc"), 3), _boundary(list("aabbbbc"), 5), _boundary(list("bbbbc"), 1)
    (2, 6, 4)
    """
    if not 0 < index < len(keys) or keys[index] != keys[index - 1]:
        return index
    start, end = index, index
    while start > 0 and keys[start - 1] == keys[index]:
        start -= 1
    while end < len(keys) and keys[end] == keys[index]:
        end += 1
    return start if index - start <= end - index and start > lowest else end


def split_conversations(
    conversations: list[Conversation], validation_fraction: float, test_fraction: float, seed: int
) -> Splits[Conversation]:
    """Split by seeded content hash, groups kept whole: test first, then validation, rest train. Sizes round to
    nearest (a cut that would split a group moves to the group's nearer edge), with at least one example in a non-empty fraction when
    there are 10 or more examples."""
    group_hashes = [_seeded_hash(key, seed) for key in _group_keys(conversations)]
    order = sorted(range(len(conversations)),
                   key=lambda i: (group_hashes[i], _seeded_hash(conversations[i].content_key(), seed)))
    ordered = [conversations[i] for i in order]
    keys = [group_hashes[i] for i in order]
    total = len(ordered)

    def count(fraction: float) -> int:
        wanted = round(total * fraction)
        return max(wanted, 1) if fraction > 0 and total >= 10 else wanted

    test_end = _boundary(keys, count(test_fraction))
    validation_end = _boundary(keys, test_end + count(validation_fraction), lowest=test_end)
    return Splits(train=ordered[validation_end:], validation=ordered[test_end:validation_end], test=ordered[:test_end])
