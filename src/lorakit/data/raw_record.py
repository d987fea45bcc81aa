"""One JSON value read from a data file, with where it starts and what was wrong with reading it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lorakit.data.issues import Issue

__all__ = ["RawRecord"]


@dataclass(frozen=True)
class RawRecord:
    """One parsed JSON value and where it starts; `issues` are reading problems on its line(s)."""

    path: str
    line: int
    value: Any
    issues: tuple[Issue, ...] = ()
    end_line: int | None = None
