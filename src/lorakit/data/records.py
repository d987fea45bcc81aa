"""Read JSONL training records into `Conversation`s, or fail naming the file, line and field."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lorakit.errors import DataError

__all__ = ["Message", "Conversation", "read_conversations", "conversation_from_record"]

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Message:
    role: Role
    content: str


@dataclass(frozen=True)
class Conversation:
    """One training example as chat turns, with where it came from (for errors and the manifest)."""

    messages: tuple[Message, ...]
    source: str = "<memory>"
    line: int = 0
    source_urls: tuple[str, ...] = field(default=())

    def content_key(self) -> str:
        """Text identity used for splitting and duplicate detection (whitespace- and case-insensitive)."""
        return "\x1e".join(f"{m.role}\x1f{' '.join(m.content.split()).lower()}" for m in self.messages)


def _require_text(record: dict[str, Any], key: str, path: str, line: int, *, optional: bool = False) -> str:
    value = record.get(key)
    if value is None:
        if optional:
            return ""
        raise DataError(path, line, key, "missing", hint=f"Add a non-empty \"{key}\" string to this line.")
    if not isinstance(value, str):
        raise DataError(path, line, key, f"must be a string, got {type(value).__name__}")
    if not value.strip() and not optional:
        raise DataError(path, line, key, "is empty", hint=f"Write the {key} text, or delete the line.")
    return value


def conversation_from_record(record: Any, path: str, line: int) -> Conversation:
    """The guide's format: `instruction` + `response`, optional `input` (appended to the question)
    and optional `source_urls` (kept for the manifest, never trained on)."""
    if not isinstance(record, dict):
        raise DataError(path, line, None, f"expected a JSON object, got {type(record).__name__}")
    if "response" not in record and "output" in record:
        response_key = "output"  # Alpaca spelling of the same field
    else:
        response_key = "response"
    instruction = _require_text(record, "instruction", path, line)
    context = _require_text(record, "input", path, line, optional=True)
    response = _require_text(record, response_key, path, line)
    urls = record.get("source_urls", [])
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise DataError(path, line, "source_urls", "must be a list of strings")
    question = f"{instruction.strip()}\n\n{context.strip()}" if context.strip() else instruction.strip()
    return Conversation(
        messages=(Message("user", question), Message("assistant", response.strip())),
        source=path,
        line=line,
        source_urls=tuple(urls),
    )


def read_conversations(path: str | Path) -> Iterator[Conversation]:
    """Stream conversations from a JSONL file; the first bad line raises a DataError naming it."""
    path_text = str(path)
    if not Path(path).is_file():
        raise DataError(path_text, None, None, "file not found", hint="Check data.train_file in the config.")
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(path_text, line_number, None, f"not valid UTF-8 at byte {exc.start} of the line",
                                hint="Re-save the file as UTF-8.") from None
            if line_number == 1:
                text = text.removeprefix("\ufeff")
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(path_text, line_number, None, f"invalid JSON at column {exc.colno}: {exc.msg}",
                                hint="Each line must be one complete JSON object; run `lorakit data check`.") from None
            yield conversation_from_record(record, path_text, line_number)
