"""A clinician's reviews of a run's answers: RUN_DIR/review.jsonl, append-only, one JSON object per line.

Each review is written with one `write` of a whole line and fsynced before `append_review` returns, so a
closed tab or a crash loses nothing that was acknowledged. A crash in the middle of that write can leave at
most the last line cut short: readers skip it (with a warning naming the line), and the next append ends it
with a newline first, so the new review stands on its own line. Nothing is ever rewritten; a later review of
the same answer supersedes an earlier one when the reviews are read for export.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from lorakit.errors import DataError
from lorakit.run.layout import REVIEW_FILE
from lorakit.runtime.logging import get_logger

__all__ = ["Verdict", "ReviewedModel", "ReviewSource", "Review", "append_review",
           "read_reviews", "utc_now"]

log = get_logger("review.store")

Verdict = Literal["good", "bad"]
ReviewedModel = Literal["base", "tuned"]
ReviewSource = Literal["test", "safety", "chat"]  # a test question, a safety probe (or twin), a chat turn
_CHOICES = {"verdict": ("good", "bad"), "model": ("base", "tuned"), "source": ("test", "safety", "chat")}


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Review:
    """One verdict on one answer, with the exact prompt and answer that were judged.

    `item_id` is the probe id (e.g. "dosing-006") for safety probes, "FILE:LINE" for test questions (as in
    eval/answers.jsonl) and any stable id for chat turns; `step` is the training step of the adapter that
    answered (None for the base model).
    """

    run_id: str
    step: int | None
    source: ReviewSource
    item_id: str
    model: ReviewedModel
    prompt: str
    answer: str
    verdict: Verdict
    corrected: str | None = None
    note: str | None = None
    reviewer: str | None = None
    time: str = ""

    def __post_init__(self) -> None:
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"review {name} must be one of {', '.join(choices)}, not {getattr(self, name)!r}")
        if not self.item_id or not self.prompt.strip():
            raise ValueError("a review names the item it judged and its prompt")
        if self.corrected is not None and not self.corrected.strip():
            raise ValueError("a corrected answer, when given, is not empty")

    def to_line(self) -> bytes:
        return (json.dumps(asdict(self), ensure_ascii=False) + "\n").encode("utf-8")


_FIELDS = {f.name for f in fields(Review)}


def append_review(run_dir: str | Path, review: Review) -> Review:
    """Append `review` (stamped with the current time if it has none) to RUN_DIR/review.jsonl, durably."""
    stamped = review if review.time else Review(**{**asdict(review), "time": utc_now()})
    path = Path(run_dir) / REVIEW_FILE
    descriptor = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(descriptor).st_size
        torn = size > 0 and os.pread(descriptor, 1, size - 1) != b"\n"
        data = (b"\n" if torn else b"") + stamped.to_line()
        written = os.write(descriptor, data)
        if written != len(data):  # a full disk part-way: end the line so the next append starts clean
            os.write(descriptor, b"\n")
            raise OSError(f"only {written} of {len(data)} bytes of the review reached {path}")
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    return stamped


def read_reviews(run_dir: str | Path) -> list[Review]:
    """Every complete review in file order; a line cut by a crash is skipped with a warning, any other bad line
    is a DataError naming it."""
    path = Path(run_dir) / REVIEW_FILE
    if not path.is_file():
        return []
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    reviews = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or set(record) != _FIELDS:
                raise ValueError(f"expected the fields {', '.join(sorted(_FIELDS))}")
            reviews.append(Review(**record))
        except (ValueError, TypeError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            if number == len(lines) or _looks_cut(line):
                log.warning("%s:%d: skipped a review cut short by a crash", path, number)
                continue
            raise DataError(str(path), number, None, f"is not a review: {exc}",
                            hint="review.jsonl is written by lorakit; restore it from a copy, or delete the line.") from exc
    return reviews


def _looks_cut(line: bytes) -> bool:
    """A line a crash cut short (and a later append ended): the start of a review's JSON that never closes."""
    return line.startswith(b"{") and not line.rstrip().endswith(b"}")
