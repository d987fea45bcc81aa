"""Read a JSON Lines file one line at a time, reporting what is wrong with each line instead of raising.

Memory does not grow with the file. Undecodable bytes (with their byte offset), BOMs, blank lines and
invalid JSON (with line and column) become `Issue`s; a record spread over several lines, the commonest
editor mistake, is recognised by reading on until the lines parse together, and reported as such.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Generator, Iterator
from typing import Any, BinaryIO

from lorakit.data.formats import detect_format
from lorakit.data.issues import Issue
from lorakit.data.raw_record import RawRecord

__all__ = ["read_jsonl", "decode_line", "decode_whole_file", "json_problem", "bom_issue"]

# A record spread over more lines than this is not searched for (the lines are reported one by one).
_MAX_JOINED_LINES = 200
_MAX_JOINED_BYTES = 1 << 20
UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


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


def decode_line(raw: bytes, path: str, number: int, offset: int) -> tuple[str, Issue | None]:
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        byte = raw[exc.start]
        guess = bytes([byte]).decode("cp1252", errors="replace")
        hint = "Re-save the file as UTF-8."
        if guess.isprintable() and guess != "\ufffd":
            hint = (f"Re-save the file as UTF-8 (in Windows-1252 this byte is '{guess}', "
                    "so it was probably saved that way).")
        issue = Issue(path, number, "error", "invalid-utf8",
                      f"not valid UTF-8: byte 0x{byte:02X} at byte offset {offset + exc.start} of the file",
                      column=exc.start + 1, hint=hint)
        return raw.decode("utf-8", errors="replace"), issue


def decode_whole_file(path: str, data: bytes) -> Generator[Issue, None, str | None]:
    """The text of a file read whole (`text = yield from decode_whole_file(...)`), its leading UTF-8 BOM dropped.

    Yields a warning for the BOM and an error, on the line it falls on, for the first undecodable byte; returns
    None after that error (nothing in the file can be trusted)."""
    skipped = 0
    if data.startswith(UTF8_BOM):  # Excel (CSV UTF-8) and older Windows Notepad write one
        data, skipped = data[len(UTF8_BOM):], len(UTF8_BOM)
        yield bom_issue(path, 1)
    text, decode_issue = decode_line(data, path, 1, skipped)
    if decode_issue is not None:
        line = data.count(b"\n", 0, decode_issue.column - 1) + 1
        yield Issue(path, line, "error", "invalid-utf8", decode_issue.message, hint=decode_issue.hint)
        return None
    return text


def json_problem(path: str, line: int, exc: Exception) -> Issue:
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


def read_jsonl(path: str, digest) -> Iterator[RawRecord | Issue]:
    """Records and issues of a JSONL file, in order; `digest` is fed every byte read."""
    try:
        handle = open(path, "rb")
    except OSError as exc:
        yield Issue(path, None, "error", "unreadable-file", f"cannot be read ({exc.strerror})",
                    hint="Check the file's permissions.")
        return
    with handle:
        lines = _Lines(handle, digest)
        while (item := lines.next()) is not None:
            number, offset, raw = item
            if number == 1 and raw.startswith(_UTF16_BOMS):
                yield Issue(path, None, "error", "utf16", "the file is UTF-16 encoded, not UTF-8",
                            hint="Re-save it as UTF-8 (most editors: Save As > Encoding > UTF-8).")
                return
            problems: list[Issue] = []
            if raw.startswith(UTF8_BOM):
                raw = raw[len(UTF8_BOM):]
                offset += len(UTF8_BOM)
                problems.append(bom_issue(path, number))
            text, decode_issue = decode_line(raw, path, number, offset)
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
                yield json_problem(path, number, exc)
                continue
            value, end = joined
            yield from _spread_record(path, number, end, value, problems)


def bom_issue(path: str, number: int) -> Issue:
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


