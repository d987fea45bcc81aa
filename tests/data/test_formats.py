"""The four record formats: exact conversations, and every per-record problem with its field."""

from __future__ import annotations

import pytest

from lorakit.data.conversation import Conversation, Message
from lorakit.data.formats import FileFormat, detect_format, parse_record


def convo(*turns, line=3, urls=()):
    return Conversation(tuple(Message(r, c) for r, c in turns), source="f.jsonl", line=line, source_urls=urls)


def problems(record, format):
    return [(i.severity, i.field, i.message) for i in parse_record(record, format, "f.jsonl", 3).issues]


def test_instruction_format_with_input_and_source_urls():
    record = {"instruction": " What is BP? ", "input": "Adult patient.", "response": "Blood pressure.\n",
              "source_urls": ["https://medlineplus.gov/"]}
    parsed = parse_record(record, "instruction", "f.jsonl", 3)
    assert parsed.conversation == convo(("user", "What is BP?\n\nAdult patient."), ("assistant", "Blood pressure."),
                                        urls=("https://medlineplus.gov/",))
    assert parsed.texts == (("instruction", " What is BP? "), ("input", "Adult patient."),
                            ("response", "Blood pressure.\n"))


def test_alpaca_format_with_empty_input():
    parsed = parse_record({"instruction": "Q", "input": "", "output": "A"}, "alpaca", "f.jsonl", 3)
    assert parsed.conversation == convo(("user", "Q"), ("assistant", "A"))


def test_messages_format_multi_turn_keeps_every_turn():
    record = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                           {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "BP?"},
                           {"role": "assistant", "content": "Blood pressure."}]}
    assert parse_record(record, "messages", "f.jsonl", 3).conversation == convo(
        ("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello."), ("user", "BP?"),
        ("assistant", "Blood pressure."))


def test_sharegpt_roles_map_to_chat_roles():
    record = {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Hi"},
                                {"from": "gpt", "value": "Hello."}]}
    assert parse_record(record, "sharegpt", "f.jsonl", 3).conversation == convo(
        ("system", "S"), ("user", "Hi"), ("assistant", "Hello."))


@pytest.mark.parametrize(("record", "format"), [
    ({"instruction": "Q", "response": "A"}, "instruction"),
    ({"instruction": "Q"}, "instruction"),
    ({"instruction": "Q", "input": "", "output": "A"}, "alpaca"),
    ({"messages": []}, "messages"),
    ({"conversations": []}, "sharegpt"),
    ({"question": "Q"}, None),
    (["not", "an", "object"], None),
])
def test_detect_format(record, format):
    assert detect_format(record) == format


@pytest.mark.parametrize(("record", "expected"), [
    ({"response": "A"}, [("error", "instruction", "missing")]),
    ({"instruction": "Q", "response": "   "}, [("error", "response", "is empty")]),
    ({"instruction": 5, "response": ["A"]}, [("error", "instruction", "must be a string, got number"),
                                              ("error", "response", "must be a string, got array")]),
    ({"instruction": "Q", "response": "A", "source_urls": "https://x"},
     [("error", "source_urls", "must be a list of strings, got string")]),
    ({"instruction": "Q", "input": 3, "response": "A"}, [("error", "input", "must be a string, got number")]),
])
def test_instruction_record_problems(record, expected):
    assert problems(record, "instruction") == expected


def test_missing_field_hint_names_a_likely_misspelling():
    [issue] = parse_record({"instruction": "Q", "respones": "A"}, "instruction", "f.jsonl", 3).issues
    assert issue.headline() == "f.jsonl:3: error: field 'response': missing"
    assert issue.hint == "Add a non-empty \"response\" string. Is 'respones' a misspelling of it?"


def turns(*pairs):
    return {"messages": [{"role": role, "content": content} for role, content in pairs]}


@pytest.mark.parametrize(("record", "expected"), [
    ({"messages": "hi"}, [("error", "messages", "must be a list of turns, got string")]),
    ({"messages": []}, [("error", "messages", "has no turns")]),
    ({"messages": [["user", "hi"]]},
     [("error", "messages[0]", 'must be an object with "role" and "content", got array')]),
    (turns(("user", "Q"), ("bot", "A")), [("error", "messages[1].role", "unknown role 'bot'")]),
    ({"messages": [{"role": "user", "content": "Q"}, {"content": "A"}]},
     [("error", "messages[1].role", "missing")]),
    ({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": None}]},
     [("error", "messages[1].content", "missing")]),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "Q"}]},
                   {"role": "assistant", "content": "A"}]},
     [("error", "messages[0].content", "must be a string, got array")]),
    (turns(("user", "Q"), ("assistant", "")), [("error", "messages[1].content", "is empty")]),
    (turns(("user", "Q"), ("assistant", "A"), ("user", "More?")),
     [("error", "messages", "the conversation ends with a user turn, not an assistant turn")]),
    (turns(("user", "Q"), ("system", "S"), ("assistant", "A")),
     [("error", "messages[1].role", "a system turn must be the first turn")]),
    (turns(("assistant", "Hello"), ("user", "Q"), ("assistant", "A")),
     [("error", "messages", "an assistant turn comes before any user turn")]),
    (turns(("user", "Q"), ("user", "Q again"), ("assistant", "A")),
     [("warning", "messages[1].role", "two user turns in a row")]),
])
def test_messages_record_problems(record, expected):
    assert problems(record, "messages") == expected


def test_unknown_role_hint_lists_the_roles_and_a_close_match():
    record = {"conversations": [{"from": "human", "value": "Q"}, {"from": "gtp", "value": "A"}]}
    [issue] = parse_record(record, "sharegpt", "f.jsonl", 3).issues
    assert issue.headline() == "f.jsonl:3: error: field 'conversations[1].from': unknown role 'gtp'"
    assert issue.hint == "Use one of: system, human, gpt (did you mean 'gpt'?)."


def test_sharegpt_rejects_openai_role_names():
    record = {"conversations": [{"from": "user", "value": "Q"}, {"from": "assistant", "value": "A"}]}
    assert problems(record, "sharegpt") == [("error", "conversations[0].from", "unknown role 'user'"),
                                            ("error", "conversations[1].from", "unknown role 'assistant'")]


def test_a_record_with_an_error_has_no_conversation_but_keeps_its_texts_for_the_privacy_scan():
    parsed = parse_record({"instruction": "Mail jane@example.org", "response": ""}, "instruction", "f.jsonl", 3)
    assert parsed.conversation is None
    assert parsed.texts == (("instruction", "Mail jane@example.org"),)


def test_file_format_is_detected_once_and_a_record_in_another_format_is_told_so():
    file_format = FileFormat("f.jsonl")
    assert file_format.parse({"instruction": "Q", "response": "A"}, 1).issues == ()
    [issue] = file_format.parse({"instruction": "Q", "input": "", "output": "A"}, 2).issues
    assert issue.headline() == "f.jsonl:2: error: field 'response': missing"
    assert issue.hint.endswith("This file is read as 'instruction' (detected from line 1), but this record looks "
                               "like 'alpaca'.")


def test_explicit_format_overrides_detection():
    file_format = FileFormat("f.jsonl", "alpaca")
    [issue] = file_format.parse({"instruction": "Q", "response": "A"}, 1).issues
    assert issue.headline() == "f.jsonl:1: error: field 'output': missing"
    assert "(set by data.format / --format)" in issue.hint


def test_unrecognisable_record_names_its_keys_and_likely_typos():
    [issue] = FileFormat("f.jsonl").parse({"instrution": "Q", "answer": "A"}, 4).issues
    assert issue.headline() == "f.jsonl:4: error: cannot tell the data format from 'instrution', 'answer'"
    assert issue.hint.endswith("Is 'instrution' a misspelling of 'instruction'?")
