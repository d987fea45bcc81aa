"""Read training records into `Conversation`s, stopping at the first problem with a DataError naming
file:line:field. (`lorakit.data.validate` reads the same way but reports every problem at once.)"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lorakit.data.conversation import Conversation, Message, Role
from lorakit.data.formats import FileFormat, parse_record
from lorakit.data.issues import Issue
from lorakit.data.sources import open_sources

__all__ = ["Role", "Message", "Conversation", "read_conversations", "conversation_from_record"]


def _first_error(issues: tuple[Issue, ...] | list[Issue]) -> Issue | None:
    return next((issue for issue in issues if issue.severity == "error"), None)


def conversation_from_record(record: Any, path: str, line: int, format: str = "auto") -> Conversation:
    """One record in the given format ('auto': whatever its keys announce) as a Conversation."""
    file_format = FileFormat(path, format)
    parsed = file_format.parse(record, line) if format == "auto" else parse_record(record, format, path, line)
    error = _first_error(parsed.issues)
    if error is not None:
        raise error.to_error()
    assert parsed.conversation is not None, "a record without errors has a conversation"
    return parsed.conversation


def read_conversations(path: str | Path, format: str = "auto") -> Iterator[Conversation]:
    """Stream conversations from a .jsonl/.json file or saved dataset; the first error raises a DataError."""
    for source in open_sources(path, hashlib.sha256()):
        file_format = FileFormat(source.path, format)
        for item in source.read():
            if isinstance(item, Issue):
                if item.severity == "error":
                    raise item.to_error()
                continue
            parsed = file_format.parse(item.value, item.line)
            error = _first_error(list(item.issues) + list(parsed.issues))
            if error is not None:
                raise error.to_error()
            yield parsed.conversation

