"""Fixed-width report tables for the bench scripts: rows of aligned cells, printed and optionally saved."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def aligned_row(cells: Sequence[str], widths: Sequence[int]) -> str:
    """One row: the first cell (what was measured) left-aligned, the numbers right-aligned, one space apart.

    >>> aligned_row(["what", "1.0", "2x"], [6, 5, 4])
    'what     1.0   2x'
    """
    assert len(cells) == len(widths), (cells, widths)
    first, *rest = cells
    return " ".join([f"{first:<{widths[0]}}", *(f"{cell:>{width}}" for cell, width in zip(rest, widths[1:]))])


def print_report(lines: Sequence[str], out: Path | None) -> None:
    """Print the report and, when `out` names a file, write it there too (its folder made if missing)."""
    text = "\n".join(lines)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
