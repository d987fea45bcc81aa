"""The four record formats lorakit reads, detected per file, each turned into a `Conversation`.

- instruction (the guide's): `instruction`, `response`, optional `input` (appended to the question) and
  `source_urls` (kept for the manifest, never trained on)
- alpaca: `instruction`, optional `input`, `output`
- messages (OpenAI): `messages` = [{"role": "system"|"user"|"assistant", "content": ...}, ...], multi-turn
- sharegpt: `conversations` = [{"from": "system"|"human"|"gpt", "value": ...}, ...], multi-turn

Parsing never raises: every problem of a record is returned as an `Issue` naming the exact field.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace
from typing import Any

from lorakit.data.conversation import CHAT_ROLES, Conversation, Message
from lorakit.data.issues import Issue

__all__ = ["FORMATS", "SHAREGPT_ROLES", "ParsedRecord", "detect_format", "parse_record", "FileFormat"]

FORMATS = ("instruction", "alpaca", "messages", "sharegpt")
SHAREGPT_ROLES = {"system": "system", "human": "user", "gpt": "assistant"}
_CHAT_ROLE_MAP = {role: role for role in CHAT_ROLES}
_KNOWN_KEYS = {
    "instruction": ("instruction", "input", "response", "source_urls"),
    "alpaca": ("instruction", "input", "output", "source_urls"),
    "messages": ("messages", "source_urls"),
    "sharegpt": ("conversations", "source_urls"),
}
_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean"}


@dataclass(frozen=True)
class ParsedRecord:
    """A record's conversation (None when it has errors), its text fields (for the privacy scan) and issues."""

    conversation: Conversation | None
    texts: tuple[tuple[str, str], ...]
    issues: tuple[Issue, ...]


def json_type(value: Any) -> str:
    return "null" if value is None else _JSON_TYPES.get(type(value), type(value).__name__)


def detect_format(record: Any) -> str | None:
    """The format a record's keys announce, or None.

    >>> detect_format({"instruction": "q", "input": "", "output": "a"}), detect_format({"messages": []})
    ('alpaca', 'messages')
    """
    if not isinstance(record, dict):
        return None
    if "messages" in record:
        return "messages"
    if "conversations" in record:
        return "sharegpt"
    if "output" in record and "response" not in record:
        return "alpaca"
    if "response" in record or "instruction" in record:
        return "instruction"
    return None


class _Collector:
    """Issues and text fields of one record, located at its path and line."""

    def __init__(self, path: str, line: int, record: dict):
        self.path, self.line, self.record = path, line, record
        self.issues: list[Issue] = []
        self.texts: list[tuple[str, str]] = []

    def error(self, code: str, field: str | None, message: str, hint: str | None = None) -> None:
        self.issues.append(Issue(self.path, self.line, "error", code, message, field=field, hint=hint))

    def warning(self, code: str, field: str | None, message: str, hint: str | None = None) -> None:
        self.issues.append(Issue(self.path, self.line, "warning", code, message, field=field, hint=hint))

    def text(self, container: dict, key: str, field: str, *, optional: bool = False) -> str | None:
        """A required (or optional) string field; None after recording why it is unusable."""
        value = container.get(key)
        if value is None:
            if optional:
                return ""
            typo = _typo_of(key, container)
            self.error("missing-field", field, "missing",
                       f"Add a non-empty \"{key}\" string." + (f" Is '{typo}' a misspelling of it?" if typo else ""))
            return None
        if not isinstance(value, str):
            hint = "Multimodal content parts are not supported; write the text as one string." if isinstance(
                value, list) else f"Write the {key} as a JSON string in double quotes."
            self.error("wrong-type", field, f"must be a string, got {json_type(value)}", hint)
            return None
        if not value.strip() and not optional:
            self.error("empty-field", field, "is empty", f"Write the {key} text, or delete the record.")
            return None
        self.texts.append((field, value))
        return value


def _typo_of(key: str, container: dict) -> str | None:
    others = [k for k in container if isinstance(k, str) and k != key]
    close = difflib.get_close_matches(key, others, n=1, cutoff=0.75)
    return close[0] if close else None


def _source_urls(collector: _Collector) -> tuple[str, ...]:
    urls = collector.record.get("source_urls")
    if urls is None:
        return ()
    if not isinstance(urls, list) or not all(isinstance(url, str) for url in urls):
        collector.error("wrong-type", "source_urls", f"must be a list of strings, got {json_type(urls)}",
                        "Write it as [\"https://...\", ...], or remove it.")
        return ()
    kept = tuple(url for url in urls if url.strip())
    if len(kept) < len(urls):  # an empty URL would reach the run manifest and the report
        empty = len(urls) - len(kept)
        collector.warning("empty-source-url", "source_urls", f"{empty} empty URL{'s' if empty > 1 else ''} "
                          f"left out ({len(kept)} kept)", "Delete the empty strings, or the field if no URL is left.")
    return kept


def _instruction_messages(collector: _Collector, response_key: str) -> tuple[Message, ...] | None:
    instruction = collector.text(collector.record, "instruction", "instruction")
    context = collector.text(collector.record, "input", "input", optional=True)
    response = collector.text(collector.record, response_key, response_key)
    if instruction is None or context is None or response is None:
        return None
    question = f"{instruction.strip()}\n\n{context.strip()}" if context.strip() else instruction.strip()
    return Message("user", question), Message("assistant", response.strip())


def _turn_messages(collector: _Collector, key: str, role_key: str, text_key: str,
                   roles: dict[str, str]) -> tuple[Message, ...] | None:
    turns = collector.record.get(key)
    if turns is None:
        collector.error("missing-field", key, "missing", f"Add a \"{key}\" list of turns.")
        return None
    if not isinstance(turns, list):
        collector.error("wrong-type", key, f"must be a list of turns, got {json_type(turns)}",
                        f"Write it as [{{\"{role_key}\": ..., \"{text_key}\": ...}}, ...].")
        return None
    if not turns:
        collector.error("empty-field", key, "has no turns", "Add the user and assistant turns, or delete the record.")
        return None
    messages: list[Message | None] = [_turn(collector, f"{key}[{i}]", t, role_key, text_key, roles)
                                      for i, t in enumerate(turns)]
    if any(message is None for message in messages):
        return None
    _check_turn_order(collector, key, role_key, messages)
    return tuple(messages)


def _turn(collector: _Collector, field: str, turn: Any, role_key: str, text_key: str,
          roles: dict[str, str]) -> Message | None:
    if not isinstance(turn, dict):
        collector.error("wrong-type", field, f"must be an object with \"{role_key}\" and \"{text_key}\", "
                        f"got {json_type(turn)}")
        return None
    role = turn.get(role_key)
    content = collector.text(turn, text_key, f"{field}.{text_key}")
    if role is None:
        collector.error("missing-field", f"{field}.{role_key}", "missing",
                        f"Add \"{role_key}\": one of {', '.join(roles)}.")
        return None
    if not isinstance(role, str):
        collector.error("wrong-type", f"{field}.{role_key}", f"must be a string, got {json_type(role)}",
                        f"Use one of: {', '.join(roles)}.")
        return None
    if role not in roles:
        close = difflib.get_close_matches(role.lower(), list(roles), n=1, cutoff=0.5)
        suggestion = f" (did you mean '{close[0]}'?)" if close else ""
        collector.error("unknown-role", f"{field}.{role_key}", f"unknown role '{role}'",
                        f"Use one of: {', '.join(roles)}{suggestion}.")
        return None
    return None if content is None else Message(roles[role], content)


def _check_turn_order(collector: _Collector, key: str, role_key: str, messages: list[Message]) -> None:
    """System first, a user turn before the first answer, and an assistant turn last (only answers are trained)."""
    for index, message in enumerate(messages):
        field = f"{key}[{index}].{role_key}"
        if message.role == "system" and index > 0:
            collector.error("system-not-first", field, "a system turn must be the first turn",
                            "Move it to the start of the conversation, or merge it into the first system turn.")
        elif index > 0 and message.role == messages[index - 1].role:
            collector.warning("repeated-role", field, f"two {message.role} turns in a row",
                              "Merge them, or add the missing turn in between; some chat templates reject this.")
    speakers = [message.role for message in messages if message.role != "system"]
    if speakers and speakers[0] == "assistant":
        collector.error("assistant-first", key, "an assistant turn comes before any user turn",
                        "Start the conversation with the user's question.")
    if messages[-1].role != "assistant":
        collector.error("no-final-answer", key, f"the conversation ends with a {messages[-1].role} turn, "
                        "not an assistant turn", "Add the assistant's reply, or delete the trailing turn: "
                        "only assistant turns are trained on.")


def parse_record(record: Any, format: str, path: str, line: int) -> ParsedRecord:
    """Turn one JSON value into a Conversation in the given format, with every problem it has."""
    if not isinstance(record, dict):
        issue = Issue(path, line, "error", "not-an-object", f"expected a JSON object {{...}}, got {json_type(record)}",
                      hint="Each record is one object, e.g. {\"instruction\": \"...\", \"response\": \"...\"}.")
        return ParsedRecord(None, (), (issue,))
    collector = _Collector(path, line, record)
    if format in ("instruction", "alpaca"):
        messages = _instruction_messages(collector, "response" if format == "instruction" else "output")
    elif format == "messages":
        messages = _turn_messages(collector, "messages", "role", "content", _CHAT_ROLE_MAP)
    elif format == "sharegpt":
        messages = _turn_messages(collector, "conversations", "from", "value", SHAREGPT_ROLES)
    else:
        raise ValueError(f"unknown format {format!r}; expected one of {FORMATS}")
    urls = _source_urls(collector)
    failed = messages is None or any(issue.severity == "error" for issue in collector.issues)
    conversation = None if failed else Conversation(messages, source=path, line=line, source_urls=urls)
    return ParsedRecord(conversation, tuple(collector.texts), tuple(collector.issues))


class FileFormat:
    """The format of one file: given explicitly, or detected from its first recognisable record."""

    def __init__(self, path: str, explicit: str = "auto"):
        self.path = path
        self.name: str | None = None if explicit == "auto" else explicit
        self.origin = "set by data.format / --format" if self.name else None

    def parse(self, record: Any, line: int) -> ParsedRecord:
        if self.name is None:
            self.name = detect_format(record)
            if self.name is None:
                return ParsedRecord(None, (), (self._unknown(record, line),))
            self.origin = f"detected from line {line}"
        parsed = parse_record(record, self.name, self.path, line)
        looks_like = detect_format(record)
        if looks_like in (None, self.name) or not any(i.code == "missing-field" for i in parsed.issues):
            return parsed
        note = f" This file is read as '{self.name}' ({self.origin}), but this record looks like '{looks_like}'."
        issues = tuple(
            replace(i, hint=(i.hint or "") + note) if i.code == "missing-field" else i
            for i in parsed.issues
        )
        return ParsedRecord(parsed.conversation, parsed.texts, issues)

    def _unknown(self, record: Any, line: int) -> Issue:
        if not isinstance(record, dict):
            return parse_record(record, "instruction", self.path, line).issues[0]
        keys = ", ".join(f"'{key}'" for key in list(record)[:6]) or "no keys"
        known = sorted({key for keys_ in _KNOWN_KEYS.values() for key in keys_})
        typos = {k: difflib.get_close_matches(k, known, n=1, cutoff=0.75) for k in record if isinstance(k, str)}
        guesses = "".join(f" Is '{k}' a misspelling of '{m[0]}'?" for k, m in typos.items() if m)
        return Issue(self.path, line, "error", "unknown-format", f"cannot tell the data format from {keys}",
                     hint="Use instruction/response, instruction/input/output (Alpaca), messages (OpenAI) or "
                          f"conversations (ShareGPT).{guesses}")
