"""The typed training example every data format is read into: chat turns plus where they came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Role", "CHAT_ROLES", "Message", "Conversation"]

Role = Literal["system", "user", "assistant"]
CHAT_ROLES: tuple[Role, ...] = ("system", "user", "assistant")


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
