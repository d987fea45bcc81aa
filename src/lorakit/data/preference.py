"""Preference pairs: one prompt, a chosen answer and a rejected answer, in TRL's two file formats.

- standard: `{"prompt": "question", "chosen": "better answer", "rejected": "worse answer"}`
- conversational: `{"prompt": [{"role": "user", "content": ...}, ...], "chosen": [{"role": "assistant",
  "content": ...}], "rejected": [{"role": "assistant", "content": ...}]}`; the prompt may hold a system turn
  and earlier turns, and ends with a user turn.

An optional `origin` object (where a pair came from, e.g. `lorakit review export`) is kept, never trained on.
Parsing never raises: each problem is an `Issue` naming the field, like the SFT formats (data/formats.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lorakit.data.conversation import CHAT_ROLES, Conversation, Message
from lorakit.data.formats import json_type
from lorakit.data.issues import Issue

__all__ = ["PREFERENCE_KEYS", "PreferencePair", "ParsedPreference", "is_preference_record", "parse_preference"]

PREFERENCE_KEYS = ("prompt", "chosen", "rejected")
_ALLOWED_KEYS = (*PREFERENCE_KEYS, "origin")
_FORMAT_HINT = ('One object per line: {"prompt": "...", "chosen": "...", "rejected": "..."}, or the conversational '
                'form with message lists (see docs/preference-tuning.md).')


@dataclass(frozen=True)
class PreferencePair:
    """A prompt (chat turns ending with the user's) and the answer preferred over another."""

    prompt: tuple[Message, ...]
    chosen: str
    rejected: str
    source: str = "<memory>"
    line: int = 0

    def conversations(self) -> tuple[Conversation, Conversation]:
        """The prompt answered with the chosen answer, and with the rejected one (what training renders)."""
        return tuple(Conversation((*self.prompt, Message("assistant", answer)), self.source, self.line)
                     for answer in (self.chosen, self.rejected))  # type: ignore[return-value]


@dataclass(frozen=True)
class ParsedPreference:
    """A record's pair (None when it has errors), its text fields for the privacy scan, and its issues."""

    pair: PreferencePair | None
    texts: tuple[tuple[str, str], ...]
    issues: tuple[Issue, ...]


def is_preference_record(record: Any) -> bool:
    """Whether a record is a preference pair (it has `chosen` and `rejected`).

    >>> is_preference_record({"prompt": "q", "chosen": "a", "rejected": "b"}), is_preference_record({"messages": []})
    (True, False)
    """
    return isinstance(record, dict) and "chosen" in record and "rejected" in record


class _Reader:
    def __init__(self, path: str, line: int):
        self.path, self.line = path, line
        self.issues: list[Issue] = []
        self.texts: list[tuple[str, str]] = []

    def error(self, field: str | None, code: str, message: str, hint: str | None = _FORMAT_HINT) -> None:
        self.issues.append(Issue(self.path, self.line, "error", code, message, field=field, hint=hint))

    def text(self, field: str, value: Any) -> str | None:
        if not isinstance(value, str):
            self.error(field, "wrong-type", f"must be a string, not {json_type(value)}")
            return None
        self.texts.append((field, value))
        if not value.strip():
            self.error(field, "empty-field", "is empty", hint="Write the text, or remove the record.")
            return None
        return value

    def messages(self, field: str, value: Any) -> list[Message] | None:
        if not isinstance(value, list) or not value:
            self.error(field, "wrong-type", f"must be a non-empty list of messages, not {json_type(value)}")
            return None
        messages = []
        for index, item in enumerate(value):
            where = f"{field}[{index}]"
            if not isinstance(item, dict) or item.get("role") not in CHAT_ROLES:
                role = item.get("role") if isinstance(item, dict) else None
                self.error(f"{where}.role", "unknown-role", f"must be one of {', '.join(CHAT_ROLES)}, not {role!r}")
                return None
            content = self.text(f"{where}.content", item.get("content"))
            if content is None:
                return None
            messages.append(Message(item["role"], content))
        return messages

    def answer(self, field: str, value: Any) -> str | None:
        """A standard answer (a string) or a conversational one (exactly one assistant message)."""
        if isinstance(value, str):
            return self.text(field, value)
        if not isinstance(value, list):
            self.error(field, "wrong-type", f"must be a string, or a list holding one assistant message, not "
                       f"{json_type(value)}")
            return None
        messages = self.messages(field, value)
        if messages is None:
            return None
        if len(messages) != 1 or messages[0].role != "assistant":
            self.error(field, "not-one-answer", f"must hold exactly one assistant message, not {len(messages)} "
                       f"message(s) ({', '.join(m.role for m in messages)})",
                       hint="Move earlier turns into the prompt; keep one assistant answer in chosen and rejected.")
            return None
        return messages[0].content


def _prompt(reader: _Reader, value: Any) -> tuple[Message, ...] | None:
    if isinstance(value, str):
        text = reader.text("prompt", value)
        return None if text is None else (Message("user", text),)
    messages = reader.messages("prompt", value)
    if messages is None:
        return None
    if messages[-1].role != "user":
        reader.error("prompt", "prompt-not-user", f"must end with a user message, not a {messages[-1].role} message",
                     hint="The prompt is what the answers reply to: end it with the user's question.")
        return None
    return tuple(messages)


def parse_preference(record: Any, path: str, line: int) -> ParsedPreference:
    """Read one preference record; every problem becomes an Issue naming its field."""
    reader = _Reader(path, line)
    if not isinstance(record, dict):
        reader.error(None, "not-an-object", f"must be a JSON object, not {json_type(record)}")
        return ParsedPreference(None, (), tuple(reader.issues))
    for key in PREFERENCE_KEYS:
        if key not in record:
            reader.error(key, "missing-field", "is missing")
    for key in sorted(set(record) - set(_ALLOWED_KEYS)):
        reader.issues.append(Issue(path, line, "warning", "unknown-field", "is not a preference field and is ignored",
                                   field=key, hint=f"Preference fields are {', '.join(_ALLOWED_KEYS)}."))
    if any(issue.code == "missing-field" for issue in reader.issues):
        return ParsedPreference(None, (), tuple(reader.issues))
    prompt = _prompt(reader, record["prompt"])
    chosen = reader.answer("chosen", record["chosen"])
    rejected = reader.answer("rejected", record["rejected"])
    if chosen is not None and rejected is not None and " ".join(chosen.split()) == " ".join(rejected.split()):
        reader.error("rejected", "same-answers", "is the same text as chosen, so the pair teaches nothing",
                     hint="Write the answer the model should prefer in chosen, and a worse one in rejected.")
    errors = any(issue.severity == "error" for issue in reader.issues)
    pair = None if errors or prompt is None else PreferencePair(prompt, chosen, rejected, path, line)
    return ParsedPreference(pair, tuple(reader.texts), tuple(reader.issues))
