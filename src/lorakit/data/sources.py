"""Stream raw records out of data files: JSON Lines, a JSON array, or a `datasets` dataset saved to disk.

Reading never raises on bad content: undecodable bytes, BOMs, blank lines and invalid JSON become `Issue`s
and reading goes on, so that one pass reports every problem. JSON Lines files are read one line at a time
(memory does not grow with the file); a record broken across lines is recognised and reported as such.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from lorakit.data.formats import detect_format
from lorakit.data.issues import Issue

__all__ = ["RawRecord", "Source", "open_sources", "role_from_name", "DATASET_MARKERS"]

# A record spread over more lines than this is not searched for (the lines are reported one by one).
_MAX_JOINED_LINES = 200
_MAX_JOINED_BYTES = 1 << 20
_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
_WHITESPACE = re.compile(r"[ \t\n\r]*")


@dataclass(frozen=True)
class RawRecord:
    """One parsed JSON value and where it starts; `issues` are reading problems on its line(s)."""

    path: str
    line: int
    value: Any
    issues: tuple[Issue, ...] = ()
    end_line: int | None = None


@dataclass(frozen=True)
class Source:
    """One stream of records: a file, or one split of a saved `DatasetDict`."""

    path: str
    role: str
    read: Callable[[], Iterator[RawRecord | Issue]]


def role_from_name(name: str) -> str:
    """The split a file name suggests; duplicates across splits are leakage.

    >>> [role_from_name(n) for n in ("train.jsonl", "med_val.jsonl", "test-set.json", "notes.jsonl")]
    ['train', 'validation', 'test', 'train']
    """
    words = set(re.split(r"[^a-z]+", name.lower()))
    if "test" in words:
        return "test"
    if words & {"validation", "valid", "val", "dev", "eval"}:
        return "validation"
    return "train"


def open_sources(path: str | Path, digest) -> list[Source]:
    """The record streams in `path`; `digest` (a hashlib object) is fed the bytes as they are read."""
    text = str(path)
    location = Path(path)
    role = role_from_name(location.name)
    if location.is_dir():
        if any((location / marker).is_file() for marker in DATASET_MARKERS):
            return _dataset_sources(location, digest)
        hint = "Pass a .jsonl/.json file, or a folder written by `datasets.Dataset.save_to_disk`."
        return [_failed(text, role, "is a folder, but not a dataset saved with `save_to_disk`", hint)]
    if not location.is_file():
        return [_failed(text, role, "file not found", "Check the path (and data.train_file in the config).")]
    if location.suffix.lower() == ".json":
        return [Source(text, role, lambda: _read_json_file(text, digest))]
    return [Source(text, role, lambda: _read_jsonl(text, digest))]


def _failed(path: str, role: str, message: str, hint: str) -> Source:
    def read() -> Iterator[Issue]:
        yield Issue(path, None, "error", "unreadable-file", message, hint=hint)

    return Source(path, role, read)


class _Lines:
    """Numbered raw lines of a binary file, with push-back (to un-read lines tried for a broken record)."""

    def __init__(self, handle: BinaryIO, digest):
        self._lines = iter(handle)
        self._digest = digest
        self._pending: deque[tuple[int, int, bytes]] = deque()
        self._number = 0
        self._offset = 0

    def next(self) -> tuple[int, int, bytes] | None:
        if self._pending:
            return self._pending.popleft()
        raw = next(self._lines, None)
        if raw is None:
            return None
        self._digest.update(raw)
        self._number += 1
        item = (self._number, self._offset, raw)
        self._offset += len(raw)
        return item

    def push_back(self, items: list[tuple[int, int, bytes]]) -> None:
        self._pending.extendleft(reversed(items))


def _decode(raw: bytes, path: str, number: int, offset: int) -> tuple[str, Issue | None]:
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        byte = raw[exc.start]
        guess = bytes([byte]).decode("cp1252", errors="replace")
        hint = "Re-save the file as UTF-8."
        if guess.isprintable() and guess != "\ufffd":
            hint = f"Re-save the file as UTF-8 (in Windows-1252 this byte is '{guess}', so it was probably saved that way)."
        issue = Issue(path, number, "error", "invalid-utf8",
                      f"not valid UTF-8: byte 0x{byte:02X} at byte offset {offset + exc.start} of the file",
                      column=exc.start + 1, hint=hint)
        return raw.decode("utf-8", errors="replace"), issue


def _json_problem(path: str, line: int, exc: Exception) -> Issue:
    if isinstance(exc, RecursionError):
        return Issue(path, line, "error", "invalid-json", "invalid JSON: nested too deeply",
                     hint="A training record is a flat object; check for runaway brackets.")
    if not isinstance(exc, json.JSONDecodeError):  # e.g. an integer with thousands of digits
        return Issue(path, line, "error", "invalid-json", f"invalid JSON: {exc}")
    return Issue(path, line, "error", "invalid-json", f"invalid JSON: {exc.msg}", column=exc.colno,
                 hint=_json_hint(exc.msg))


def _json_hint(message: str) -> str:
    if message.startswith("Expecting ',' delimiter"):
        return "A comma is missing between two fields or list items, just before this column."
    if message.startswith("Unterminated string"):
        return "A closing double quote is missing for the string that starts at this column."
    if message.startswith("Expecting property name"):
        return "Keys need double quotes; also look for a trailing comma before '}'."
    if message.startswith("Extra data"):
        return "More than one JSON value on this line: put each record on its own line."
    if message.startswith("Invalid control character"):
        return "A raw tab or line break inside a string: write it as \\t or \\n."
    return "Each line must be one complete JSON object, e.g. {\"instruction\": \"...\", \"response\": \"...\"}."


def _loads(text: str) -> tuple[Any, Exception | None]:
    try:
        return json.loads(text), None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        return None, exc


def _could_continue(text: str, exc: Exception) -> bool:
    """Whether a line looks like the start of a record that goes on over the next lines."""
    if not isinstance(exc, json.JSONDecodeError) or not text.lstrip().startswith(("{", "[")):
        return False
    return exc.pos >= len(text.rstrip()) or exc.msg.startswith(("Unterminated string", "Invalid control character"))


def _join_record(lines: _Lines, first: str) -> tuple[Any, int] | None:
    """Read on until the lines so far parse as one JSON value; un-read them all when they never do."""
    consumed: list[tuple[int, int, bytes]] = []
    in_object = first.lstrip().startswith("{")
    parts = [first]
    size = len(first)
    while len(consumed) < _MAX_JOINED_LINES and size < _MAX_JOINED_BYTES:
        item = lines.next()
        if item is None:
            break
        consumed.append(item)
        try:
            text = item[2].decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            break
        stripped = text.strip()
        if in_object and stripped.startswith("{") and detect_format(_loads(stripped)[0]) is not None:
            break  # the next record starts: the first line was simply cut short
        parts.append(text)
        size += len(text)
        if stripped.endswith(("}", "]")):
            try:
                value = json.loads("\n".join(parts), strict=False)
            except (ValueError, RecursionError):
                continue
            return value, item[0]
    lines.push_back(consumed)
    return None


def _read_jsonl(path: str, digest) -> Iterator[RawRecord | Issue]:
    with open(path, "rb") as handle:
        lines = _Lines(handle, digest)
        while (item := lines.next()) is not None:
            number, offset, raw = item
            if number == 1 and raw.startswith(_UTF16_BOMS):
                yield Issue(path, None, "error", "utf16", "the file is UTF-16 encoded, not UTF-8",
                            hint="Re-save it as UTF-8 (most editors: Save As > Encoding > UTF-8).")
                return
            problems: list[Issue] = []
            if raw.startswith(_UTF8_BOM):
                raw = raw[len(_UTF8_BOM):]
                offset += len(_UTF8_BOM)
                problems.append(_bom_issue(path, number))
            text, decode_issue = _decode(raw, path, number, offset)
            text = text.rstrip("\r\n")  # so that JSON errors point into the line, not past its end
            problems += [decode_issue] if decode_issue else []
            if not text.strip():
                yield from problems
                yield Issue(path, number, "warning", "blank-line", "blank line",
                            hint="Delete it: a JSONL file has exactly one JSON object per line.")
                continue
            value, exc = _loads(text)
            if exc is None:
                yield RawRecord(path, number, value, tuple(problems))
                continue
            joined = _join_record(lines, text) if _could_continue(text, exc) else None
            if joined is None:
                yield from problems
                yield _json_problem(path, number, exc)
                continue
            value, end = joined
            yield from _spread_record(path, number, end, value, problems)


def _bom_issue(path: str, number: int) -> Issue:
    if number == 1:
        return Issue(path, 1, "warning", "bom", "the file starts with a UTF-8 byte-order mark (BOM)", column=1,
                     hint="lorakit skips it, but other tools may not: save the file as UTF-8 without BOM.")
    return Issue(path, number, "warning", "bom", "a UTF-8 byte-order mark (BOM) starts this line", column=1,
                 hint="Files were probably concatenated: remove the invisible BOM character at the start of the line.")


def _spread_record(path: str, start: int, end: int, value: Any, problems: list[Issue]) -> Iterator[RawRecord | Issue]:
    if isinstance(value, list):
        yield from problems
        yield Issue(path, start, "error", "multiline-record",
                    f"a JSON array spread over lines {start}-{end}; a .jsonl file has one object per line",
                    end_line=end, hint="Rename the file to .json, or write each record on one line (`jq -c '.[]'`).")
        return
    spread = Issue(path, start, "error", "multiline-record", f"one record is spread over lines {start}-{end}",
                   end_line=end, hint="JSONL needs each record on a single line: join these lines (e.g. `jq -c .`).")
    yield RawRecord(path, start, value, tuple(problems) + (spread,), end_line=end)


def _read_json_file(path: str, digest) -> Iterator[RawRecord | Issue]:
    """A `.json` file holding one array of records; a `.json` file of JSON Lines is read as JSONL."""
    with open(path, "rb") as handle:
        head = handle.read(4096).lstrip(b" \t\r\n")
    if not head.removeprefix(_UTF8_BOM).lstrip().startswith(b"["):
        yield from _read_jsonl(path, digest)
        return
    data = Path(path).read_bytes()
    digest.update(data)
    skipped = 0
    if data.startswith(_UTF8_BOM):
        data, skipped = data[len(_UTF8_BOM):], len(_UTF8_BOM)
        yield _bom_issue(path, 1)
    text, decode_issue = _decode(data, path, 1, skipped)
    if decode_issue is not None:
        line = data.count(b"\n", 0, decode_issue.column - 1) + 1
        yield Issue(path, line, "error", "invalid-utf8", decode_issue.message, hint=decode_issue.hint)
        return
    yield from _array_records(path, text)


def _array_records(path: str, text: str) -> Iterator[RawRecord | Issue]:
    decoder = json.JSONDecoder()
    position = _WHITESPACE.match(text).end() + 1  # just after '['
    line, counted = 1, 0
    while True:
        position = _WHITESPACE.match(text, position).end()
        if position < len(text) and text[position] == "]" and counted == 0:
            position += 1
            break
        line += text.count("\n", counted, position)
        counted = position
        try:
            value, position = decoder.raw_decode(text, position)
        except (ValueError, RecursionError) as exc:
            yield _array_problem(path, line, text, position, exc)
            return
        yield RawRecord(path, line, value)
        position = _WHITESPACE.match(text, position).end()
        if position < len(text) and text[position] == ",":
            position += 1
            continue
        if position < len(text) and text[position] == "]":
            position += 1
            break
        yield _array_problem(path, line, text, position, json.JSONDecodeError("Expecting ',' or ']'", text, position))
        return
    if text[_WHITESPACE.match(text, position).end():]:
        yield _array_problem(path, line, text, position, json.JSONDecodeError("Extra data", text, position))


def _array_problem(path: str, line: int, text: str, position: int, exc: Exception) -> Issue:
    if isinstance(exc, json.JSONDecodeError):
        return Issue(path, exc.lineno, "error", "invalid-json", f"invalid JSON: {exc.msg}", column=exc.colno,
                     hint=_json_hint(exc.msg))
    return _json_problem(path, line, exc)


def _dataset_sources(directory: Path, digest) -> list[Source]:
    try:
        import datasets
    except ImportError:
        return [_failed(str(directory), "train", "reading a saved dataset needs the `datasets` package",
                        "pip install datasets")]
    try:
        loaded = datasets.load_from_disk(str(directory))
    except (OSError, ValueError) as exc:
        return [_failed(str(directory), "train", f"cannot load the saved dataset: {exc}",
                        "Re-save it with `Dataset.save_to_disk`, or export it to JSONL.")]
    splits = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [(None, loaded)]
    sources = []
    for name, dataset in splits:
        for cache_file in dataset.cache_files:
            with open(cache_file["filename"], "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
        shown = f"{directory}[{name}]" if name else str(directory)
        role = role_from_name(name or directory.name)
        sources.append(Source(shown, role, lambda d=dataset, s=shown: _dataset_rows(s, d)))
    return sources


def _dataset_rows(path: str, dataset) -> Iterator[RawRecord]:
    for index, row in enumerate(dataset):
        yield RawRecord(path, index + 1, row)
