"""Exact duplicates, near-duplicates, shared answers and train/validation/test leakage, in small memory.

Each example is kept as three 64-bit hashes plus its file and line (about 30 bytes, whatever its length),
and compared once at the end, so checking a large file never holds its text.
"""

from __future__ import annotations

import hashlib
import re
from array import array

import numpy as np

from lorakit.data.conversation import Conversation
from lorakit.data.issues import Issue

__all__ = ["exact_text", "near_text", "answer_text", "DuplicateIndex"]

_LISTED_RECORDS = 20

_NOT_WORD = re.compile(r"[\W_]+")


def exact_text(conversation: Conversation) -> str:
    return "\x1e".join(f"{m.role}\x1f{m.content}" for m in conversation.messages)


def near_text(conversation: Conversation) -> str:
    """The text with case, spacing and punctuation ignored: what near-duplicates share.

    >>> from lorakit.data.conversation import Message
    >>> near_text(Conversation((Message("user", "What is  BP?"), Message("assistant", "Blood-pressure."))))
    'user\\x1fwhat is bp\\x1eassistant\\x1fblood pressure'
    """
    return _near_text(_normalized(conversation))


def answer_text(conversation: Conversation) -> str:
    """What the assistant says, with case, spacing and punctuation ignored: records sharing it share an answer.

    >>> from lorakit.data.conversation import Message
    >>> answer_text(Conversation((Message("user", "Q?"), Message("assistant", "See a  Doctor."))))
    'see a doctor'
    """
    return _answer_text(_normalized(conversation))


def _normalized(conversation: Conversation) -> list[tuple[str, str]]:
    return [(m.role, _NOT_WORD.sub(" ", m.content.lower()).strip()) for m in conversation.messages]


def _near_text(normalized: list[tuple[str, str]]) -> str:
    return "\x1e".join(f"{role}\x1f{text}" for role, text in normalized)


def _answer_text(normalized: list[tuple[str, str]]) -> str:
    return "\x1e".join(text for role, text in normalized if role == "assistant")


def _hash64(text: str) -> int:
    data = text.encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


class DuplicateIndex:
    """Collects examples from files with a split role ("train", "validation", "test"); `issues()` compares them."""

    def __init__(self) -> None:
        self._files: list[tuple[str, str]] = []
        self._exact = array("Q")
        self._near = array("Q")
        self._answer = array("Q")
        self._file = array("I")
        self._line = array("I")

    def add_file(self, path: str, role: str) -> int:
        self._files.append((path, role))
        return len(self._files) - 1

    def add(self, file_index: int, line: int, conversation: Conversation) -> None:
        self._exact.append(_hash64(exact_text(conversation)))
        normalized = _normalized(conversation)  # once for both
        self._near.append(_hash64(_near_text(normalized)))
        self._answer.append(_hash64(_answer_text(normalized)))
        self._file.append(file_index)
        self._line.append(line)

    def _where(self, entry: int) -> str:
        return f"{self._files[self._file[entry]][0]}:{self._line[entry]}"

    def _role(self, entry: int) -> str:
        return self._files[self._file[entry]][1]

    def issues(self) -> list[Issue]:
        """Leakage errors across roles first; then duplicate warnings within a role (the first copy is kept)."""
        found: list[Issue] = []
        reported: set[int] = set()
        for group in _groups(self._near):
            first = group[0]
            for entry in group[1:]:
                if self._role(entry) != self._role(first):
                    reported.add(entry)
                    found.append(self._issue(entry, "error", "split-leakage",
                                 f"the same example as {self._where(first)} is in the {self._role(first)} split "
                                 f"and in the {self._role(entry)} split (leakage)",
                                 "Remove it from one of the files: evaluating on training examples overstates "
                                 "quality."))
        for group in _groups(self._exact):
            for entry in group[1:]:
                if entry not in reported and self._role(entry) == self._role(group[0]):
                    reported.add(entry)
                    found.append(self._issue(entry, "warning", "duplicate",
                                             f"exact duplicate of {self._where(group[0])}",
                                             "Delete one copy: duplicates over-weight an example."))
        for group in _groups(self._near):
            same_role = [entry for entry in group if self._role(entry) == self._role(group[0])]
            for entry in same_role[1:]:
                if entry not in reported:
                    found.append(self._issue(entry, "warning", "near-duplicate",
                                 f"near-duplicate of {self._where(group[0])} (same text ignoring case, spacing "
                                 "and punctuation)", "Delete one copy, or make them genuinely different."))
        return found + self._shared_answers()

    def _shared_answers(self) -> list[Issue]:
        """One warning per group of records that give one answer to different questions, naming every record."""
        found = []
        for group in _groups(self._answer):
            if len({self._near[entry] for entry in group}) < 2:
                continue  # copies of one record: reported as duplicates above
            listed = ", ".join(self._where(entry) for entry in group[:_LISTED_RECORDS])
            more = f" and {len(group) - _LISTED_RECORDS} more" if len(group) > _LISTED_RECORDS else ""
            roles = list(dict.fromkeys(self._role(entry) for entry in group))
            across = f" (across the {' and '.join(roles)} splits)" if len(roles) > 1 else ""
            hint = ("Move them into one split: a test answer seen in training overstates quality." if across else
                    "Check that the answer fits each question. lorakit's splits (`data split`, and the split in "
                    "`train`) keep such records on one side, so no test answer was seen in training.")
            found.append(self._issue(group[0], "warning", "shared-answer", f"{len(group)} records give the same "
                                     f"answer to different questions{across}: {listed}{more}", hint))
        return found

    def _issue(self, entry: int, severity, code: str, message: str, hint: str) -> Issue:
        return Issue(self._files[self._file[entry]][0], self._line[entry], severity, code, message, hint=hint)


def _groups(hashes: array) -> list[list[int]]:
    """Indices sharing a hash, each group in insertion order; only groups of two or more.

    >>> _groups(array("Q", [5, 7, 5, 9, 7, 5]))
    [[0, 2, 5], [1, 4]]
    """
    if len(hashes) < 2:
        return []
    keys = np.frombuffer(hashes, dtype=np.uint64)
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    starts_group = np.ones(len(ordered), dtype=bool)
    starts_group[1:] = ordered[1:] != ordered[:-1]
    starts = np.flatnonzero(starts_group)
    sizes = np.diff(np.append(starts, len(ordered)))
    groups = [order[start:start + size].tolist() for start, size in zip(starts[sizes > 1], sizes[sizes > 1])]
    return sorted(groups, key=lambda group: group[0])
