"""Problems found in training data, each naming its file, line (and column), field and what to do.

Every checker returns `Issue`s instead of raising, so one pass reports every problem, not just the first.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Literal

from lorakit.errors import DataError

__all__ = ["Severity", "Issue", "FileSummary", "DataReport", "line_ranges"]

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Issue:
    """One problem. `code` is stable (for `--json` consumers); `message` and `hint` are for people.

    >>> Issue("a.jsonl", 3, "error", "missing-field", "missing", field="response", hint="Add it.").headline()
    "a.jsonl:3: error: field 'response': missing"
    """

    path: str
    line: int | None
    severity: Severity
    code: str
    message: str
    field: str | None = None
    column: int | None = None
    hint: str | None = None
    end_line: int | None = None  # a record spread over several lines ends here

    def location(self) -> str:
        where = self.path
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return where

    def headline(self) -> str:
        what = f"field '{self.field}': " if self.field else ""
        return f"{self.location()}: {self.severity}: {what}{self.message}"

    def to_error(self) -> DataError:
        """This issue as the exception the library raises when it stops at the first problem."""
        column = f" (column {self.column})" if self.column is not None else ""
        return DataError(self.path, self.line, self.field, self.message + column, hint=self.hint)

    def lines(self) -> range:
        """The lines this issue covers (empty for a whole-file issue)."""
        if self.line is None:
            return range(0)
        return range(self.line, (self.end_line or self.line) + 1)


@dataclass
class FileSummary:
    """What was read from one data file (or one split of a saved dataset)."""

    path: str
    role: str  # "train", "validation" or "test": duplicates across roles are leakage
    format: str | None = None
    records: int = 0
    valid: int = 0


@dataclass
class DataReport:
    """Everything `data check` found, plus what was skipped when training with `--skip-invalid`."""

    files: list[FileSummary] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    skipped: list[tuple[str, int]] = field(default_factory=list)
    data_sha256: str | None = None

    @property
    def errors(self) -> list[Issue]:
        return [issue for issue in self.issues if issue.severity == "error"]

    @property
    def warnings(self) -> list[Issue]:
        return [issue for issue in self.issues if issue.severity == "warning"]

    @property
    def phi_findings(self) -> list[Issue]:
        return [issue for issue in self.issues if issue.code.startswith("phi-")]

    @property
    def examples(self) -> int:
        return sum(summary.valid for summary in self.files)

    def exit_code(self, strict: bool = False) -> int:
        """0 when clean; 2 on errors, or on warnings too with `--strict`."""
        return 2 if self.errors or (strict and self.warnings) else 0

    def sorted_issues(self) -> list[Issue]:
        order = {summary.path: index for index, summary in enumerate(self.files)}
        return sorted(self.issues, key=lambda i: (order.get(i.path, -1), i.line or 0, i.column or 0))

    def manifest_notes(self) -> dict:
        """What the run manifest records about the data check (counts and line numbers, never text)."""
        return {
            "formats": {summary.path: summary.format for summary in self.files},
            "check_warnings": len(self.warnings),
            "phi_findings_allowed": len(self.phi_findings),
            "skipped_invalid_lines": [f"{path}:{line}" for path, line in self.skipped],
        }

    def to_json(self) -> dict:
        return {
            "ok": not self.errors,
            "examples": self.examples,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "files": [asdict(summary) for summary in self.files],
            "issues": [asdict(issue) for issue in self.sorted_issues()],
            "skipped": [{"path": path, "line": line} for path, line in self.skipped],
            "data_sha256": self.data_sha256,
        }


def line_ranges(lines: Iterable[int]) -> str:
    """Compact line list for messages.

    >>> line_ranges([9, 3, 4, 5, 7])
    '3-5, 7, 9'
    """
    ordered = sorted(set(lines))
    parts: list[str] = []
    start = previous = None
    for number in ordered + [None]:
        if start is not None and number == previous + 1:
            previous = number
            continue
        if start is not None:
            parts.append(str(start) if start == previous else f"{start}-{previous}")
        start = previous = number
    return ", ".join(parts)
