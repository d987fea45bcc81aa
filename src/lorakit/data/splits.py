"""Deterministic train/validation/test split from the seed.

Examples are ordered by a seeded hash of their content, so the split does not depend on file order and
identical examples always land on the same side (no leakage between train and test).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Generic, TypeVar

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


def _seeded_hash(conversation: Conversation, seed: int) -> str:
    return hashlib.sha256(f"{seed}\x00{conversation.content_key()}".encode()).hexdigest()


def _boundary(keys: list[str], index: int) -> int:
    """Move a cut forward so that equal keys (duplicates) never straddle it."""
    while 0 < index < len(keys) and keys[index] == keys[index - 1]:
        index += 1
    return index


def split_conversations(
    conversations: list[Conversation], validation_fraction: float, test_fraction: float, seed: int
) -> Splits[Conversation]:
    """Split by seeded content hash: test first, then validation, rest train. Sizes round to nearest,
    with at least one example in a non-empty fraction when there are 10 or more examples."""
    ordered = sorted(conversations, key=lambda c: _seeded_hash(c, seed))
    keys = [_seeded_hash(c, seed) for c in ordered]
    total = len(ordered)

    def count(fraction: float) -> int:
        wanted = round(total * fraction)
        return max(wanted, 1) if fraction > 0 and total >= 10 else wanted

    test_end = _boundary(keys, count(test_fraction))
    validation_end = _boundary(keys, test_end + count(validation_fraction))
    return Splits(train=ordered[validation_end:], validation=ordered[test_end:validation_end], test=ordered[:test_end])
