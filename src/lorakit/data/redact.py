"""Write a copy of a data file with likely identifiers replaced by their kind ("[PHONE]"); never in place.

Only string values are redacted (keys are kept), lines without findings are copied byte for byte, and
lines that are not valid JSON are redacted as plain text so that nothing slips through unscanned. The copy is
JSON Lines (or a JSON array, for a .json output) whatever the input's format, so it is named accordingly:
`redacted_path` gives `<stem>.redacted.jsonl`, the name `lorakit data redact` and the studio both use.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorakit.data.issues import Issue
from lorakit.data.phi_scan import PhiFinding, scan_text
from lorakit.data.sources import open_sources
from lorakit.errors import DataError

__all__ = ["RedactionSummary", "OUTPUT_SUFFIXES", "redact_text", "redact_value", "redacted_path", "redact_file"]

OUTPUT_SUFFIXES = (".jsonl", ".json")


@dataclass
class RedactionSummary:
    """How much was redacted, by kind; never the identifiers themselves."""

    records: int = 0
    changed_records: int = 0
    by_kind: Counter = field(default_factory=Counter)
    unparsed_lines: list[int] = field(default_factory=list)


def redact_text(text: str, findings: list[PhiFinding] | None = None) -> str:
    """`text` with each identifier replaced by its kind in brackets; keywords ("DOB:") are kept.

    >>> redact_text("DOB: 02/14/1961, call 555-123-4567.")
    'DOB: [DOB], call [PHONE].'
    """
    findings = scan_text(text) if findings is None else findings
    pieces, position = [], 0
    for finding in findings:
        pieces.append(text[position:finding.start])
        pieces.append(f"[{finding.kind.upper()}]")
        position = finding.end
    pieces.append(text[position:])
    return "".join(pieces)


def redact_value(value: Any, counts: Counter) -> Any:
    """A copy of a JSON value with every string redacted; `counts` gains the kinds found."""
    if isinstance(value, str):
        findings = scan_text(value)
        counts.update(finding.kind for finding in findings)
        return redact_text(value, findings) if findings else value
    if isinstance(value, list):
        return [redact_value(item, counts) for item in value]
    if isinstance(value, dict):
        return {key: redact_value(item, counts) for key, item in value.items()}
    return value


def redacted_path(source: str | Path) -> Path:
    """Where the redacted copy of `source` goes by default: next to it, as JSON Lines.

    >>> redacted_path("data/notes.csv")
    PosixPath('data/notes.redacted.jsonl')
    """
    source = Path(source)
    return source.with_name(f"{source.stem}.redacted.jsonl")


def _same_file(source: Path, target: Path) -> bool:
    return target.exists() and os.path.samefile(source, target) or source.resolve() == target.resolve()


def redact_file(source: str | Path, target: str | Path, overwrite: bool = False) -> RedactionSummary:
    """Redact `source` (any format lorakit reads) into `target`: JSON Lines for .jsonl, one array for .json;
    written atomically."""
    source, target = Path(source), Path(target)
    if not source.exists():
        raise DataError(str(source), None, None, "file not found")
    if target.suffix.lower() not in OUTPUT_SUFFIXES:
        raise DataError(str(target), None, None, "must end in .jsonl or .json: the redacted copy is JSON Lines (or a "
                        "JSON array), whatever the input's format", hint=f"Write it to {redacted_path(source)}.")
    if _same_file(source, target):
        raise DataError(str(target), None, None, "is the input file; redaction never modifies its input",
                        hint="Choose another output path, e.g. data.redacted.jsonl.")
    if target.exists() and not overwrite:
        raise DataError(str(target), None, None, "already exists", hint="Choose another path, or pass --overwrite.")
    partial = target.with_name(f".{target.name}.partial")
    summary = RedactionSummary()
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(partial, "wb") as out:
            if source.is_file() and source.suffix.lower() == ".jsonl" and target.suffix.lower() == ".jsonl":
                _redact_jsonl(source, out, summary)
            else:
                _redact_records(source, out, summary, as_array=target.suffix.lower() == ".json")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return summary


def _redact_jsonl(source: Path, out, summary: RedactionSummary) -> None:
    with open(source, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            text = raw.decode("utf-8", errors="replace")
            try:
                record = json.loads(text.removeprefix("\ufeff"))
            except (ValueError, RecursionError):
                if text.strip():
                    summary.unparsed_lines.append(number)
                counts: Counter = Counter()
                redacted = redact_value(text, counts)
                summary.by_kind.update(counts)
                out.write(redacted.encode("utf-8") if counts else raw)
                continue
            summary.records += 1
            counts = Counter()
            redacted_record = redact_value(record, counts)
            if counts:
                summary.changed_records += 1
                summary.by_kind.update(counts)
                out.write((json.dumps(redacted_record, ensure_ascii=False) + "\n").encode("utf-8", "surrogatepass"))
            else:
                out.write(raw)


def _redact_records(source: Path, out, summary: RedactionSummary, as_array: bool) -> None:
    """A .json array or saved dataset: every readable record, redacted, as JSON Lines or one array."""
    out.write(b"[\n" if as_array else b"")
    first = True
    for stream in open_sources(source, hashlib.sha256()):
        for item in stream.read():
            if isinstance(item, Issue):
                if item.severity == "error":
                    raise item.to_error()
                continue
            summary.records += 1
            counts: Counter = Counter()
            record = redact_value(item.value, counts)
            summary.changed_records += bool(counts)
            summary.by_kind.update(counts)
            line = json.dumps(record, ensure_ascii=False)
            text = ("" if first else ",\n") + line if as_array else line + "\n"
            out.write(text.encode("utf-8", "surrogatepass"))
            first = False
    out.write(b"\n]\n" if as_array else b"")
