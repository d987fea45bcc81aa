"""Stream raw records out of data files: JSON Lines, a JSON array, CSV/TSV, or a `datasets` dataset saved to disk.

Reading never raises on bad content: undecodable bytes, BOMs, blank lines and invalid JSON become `Issue`s
and reading goes on, so that one pass reports every problem (JSON Lines details live in `jsonl.py`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lorakit.data.delimited import DELIMITED_SUFFIXES, looks_like_delimited_header, read_delimited
from lorakit.data.issues import Issue
from lorakit.data.jsonl import UTF8_BOM, decode_whole_file, json_problem, read_jsonl
from lorakit.data.raw_record import RawRecord

__all__ = ["RawRecord", "Source", "open_sources", "role_from_name", "DATASET_MARKERS"]

DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
_WHITESPACE = re.compile(r"[ \t\n\r]*")


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
        hint = "Pass a .jsonl/.json/.csv/.tsv file, or a folder written by `datasets.Dataset.save_to_disk`."
        return [_failed(text, role, "is a folder, but not a dataset saved with `save_to_disk`", hint)]
    if not location.is_file():
        return [_failed(text, role, "file not found", "Check the path (and data.train_file in the config).")]
    if location.suffix.lower() == ".json":
        return [Source(text, role, lambda: _read_json_file(text, digest))]
    if location.suffix.lower() in DELIMITED_SUFFIXES:
        return [Source(text, role, lambda: read_delimited(text, digest))]
    table = _table_header(location)
    if table is not None:  # one plain sentence instead of an "invalid JSON" error per row
        return [_failed(text, role, f"is a {table}-separated table with a header row, not JSON Lines",
                        f"Rename it to .{'tsv' if table == 'tab' else 'csv'}: lorakit reads tables whose header "
                        "names the columns instruction, input (optional) and response (or output).")]
    return [Source(text, role, lambda: read_jsonl(text, digest))]


def _table_header(location: Path) -> str | None:
    """The delimiter's name when a would-be JSONL file starts with a CSV/TSV header row, else None."""
    try:
        with open(location, "rb") as handle:
            head = handle.read(65536).removeprefix(UTF8_BOM)
    except OSError:
        return None  # read_jsonl reports it
    first = next((line for line in head.decode("utf-8", errors="replace").splitlines() if line.strip()), "")
    return looks_like_delimited_header(first)


def _failed(path: str, role: str, message: str, hint: str) -> Source:
    def read() -> Iterator[Issue]:
        yield Issue(path, None, "error", "unreadable-file", message, hint=hint)

    return Source(path, role, read)


def _read_json_file(path: str, digest) -> Iterator[RawRecord | Issue]:
    """A `.json` file holding one array of records; a `.json` file of JSON Lines is read as JSONL."""
    with open(path, "rb") as handle:
        head = handle.read(4096).lstrip(b" \t\r\n")
    if not head.removeprefix(UTF8_BOM).lstrip().startswith(b"["):
        yield from read_jsonl(path, digest)
        return
    data = Path(path).read_bytes()
    digest.update(data)
    text = yield from decode_whole_file(path, data)
    if text is None:
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
    """A problem inside a JSON array: the decoder's line and column are already counted over the whole file."""
    return json_problem(path, exc.lineno if isinstance(exc, json.JSONDecodeError) else line, exc)


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
