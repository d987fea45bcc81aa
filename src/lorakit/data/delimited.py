"""Read a CSV or TSV file of records: a header row naming the columns, then one record per row.

The columns are the keys of the JSON formats that fit in a table: `instruction`, `response` (or `output`),
optional `input` and `source_urls` (URLs separated by spaces or ';'). Rows come out as `RawRecord`s with the
1-based line on which the row starts, so a quoted answer spread over several lines still points at its record.
Reading never raises on bad content: undecodable bytes, a ragged row or broken quoting become `Issue`s.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from pathlib import Path

from lorakit.data.issues import Issue
from lorakit.data.jsonl import decode_whole_file
from lorakit.data.raw_record import RawRecord

__all__ = ["DELIMITED_SUFFIXES", "read_delimited", "looks_like_delimited_header"]

DELIMITED_SUFFIXES = {".csv": ",", ".tsv": "\t"}
_DELIMITERS = {"comma": ",", "tab": "\t", "semicolon": ";"}
_URL_SEPARATORS = re.compile(r"[\s;]+")
# The columns that announce a table of records (any of them in the header row).
_KNOWN_COLUMNS = {"instruction", "input", "response", "output", "source_urls", "question", "answer"}
_MAX_FIELD_CHARS = 10 * 1024 * 1024  # the csv module's default (128 KiB) is shorter than a long answer


def looks_like_delimited_header(line: str) -> str | None:
    """The delimiter name when a line that is not JSON is a CSV/TSV header of record columns, else None.

    >>> looks_like_delimited_header("instruction,input,response"), looks_like_delimited_header("question\\tanswer")
    ('comma', 'tab')
    >>> looks_like_delimited_header('{"instruction": "q",') is None
    True
    """
    for delimiter, name in ((",", "comma"), ("\t", "tab"), (";", "semicolon")):
        cells = {cell.strip().strip('"').lower() for cell in line.split(delimiter)}
        if len(cells) >= 2 and cells & _KNOWN_COLUMNS and "" not in cells and not line.lstrip().startswith("{"):
            return name
    return None


def read_delimited(path: str, digest) -> Iterator[RawRecord | Issue]:
    """Records and issues of a .csv (comma) or .tsv (tab) file, in order; `digest` is fed every byte read."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        yield Issue(path, None, "error", "unreadable-file", f"cannot be read ({exc.strerror})",
                    hint="Check the file's permissions.")
        return
    digest.update(data)
    text = yield from decode_whole_file(path, data)
    if text is None:
        return
    delimiter = DELIMITED_SUFFIXES.get(Path(path).suffix.lower(), ",")
    if delimiter == ",":  # spreadsheets in many locales save "CSV" with semicolons
        first_line = text.split("\n", 1)[0]
        delimiter = _DELIMITERS.get(looks_like_delimited_header(first_line) or "comma", ",")
    yield from _rows(path, text, delimiter)


def _rows(path: str, text: str, delimiter: str) -> Iterator[RawRecord | Issue]:
    csv.field_size_limit(max(csv.field_size_limit(), _MAX_FIELD_CHARS))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    header: list[str] | None = None
    start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            yield Issue(path, start, "error", "invalid-csv", f"cannot be read as {_name(delimiter)}: {exc}",
                        hint="Quote fields that contain the delimiter, quotes or line breaks (\"...\", "
                             "with a quote inside written as \"\").")
            return
        line, start = start, reader.line_num + 1  # a quoted field may span lines: a row starts after the last
        if not any(cell.strip() for cell in row):
            continue  # a blank row carries nothing (spreadsheets end with several)
        if header is None:
            header = [cell.strip() for cell in row]
            problem = _header_problem(header)
            if problem:
                yield Issue(path, line, "error", "invalid-csv-header", problem,
                            hint="The first row names the columns, e.g. instruction,input,response.")
                return
            continue
        if len(row) != len(header):
            yield Issue(path, line, "error", "ragged-row", f"has {len(row)} fields, but the header has {len(header)}",
                        hint=f"Quote fields that contain a {_name(delimiter, single=True)}, or add the missing ones.")
            continue
        yield RawRecord(path, line, _record(header, row))
    if header is None:
        yield Issue(path, None, "error", "empty-file", "holds no header row and no records",
                    hint="The first row names the columns, e.g. instruction,input,response.")


def _header_problem(header: list[str]) -> str | None:
    if any(not name for name in header):
        return f"the header row has an empty column name (column {header.index('') + 1})"
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        return f"the header row names {', '.join(repeated)} more than once"
    return None


def _record(header: list[str], row: list[str]) -> dict:
    record: dict = dict(zip(header, row))
    if "source_urls" in record:
        record["source_urls"] = [url for url in _URL_SEPARATORS.split(record["source_urls"]) if url]
    return record


def _name(delimiter: str, single: bool = False) -> str:
    if single:
        return {value: key for key, value in _DELIMITERS.items()}[delimiter]
    return "TSV" if delimiter == "\t" else "CSV"
