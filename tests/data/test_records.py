"""`read_conversations` and `conversation_from_record`: the stop-at-first-problem API used by callers."""

from __future__ import annotations

import pytest
from data_files import write_lines

from lorakit.data.records import Conversation, Message, conversation_from_record, read_conversations
from lorakit.errors import DataError


def test_reads_every_format_in_one_call_per_file(tmp_path):
    guide = write_lines(tmp_path, "guide.jsonl", {"instruction": "Q1", "response": "A1", "source_urls": ["https://a"]})
    chat = write_lines(tmp_path, "chat.jsonl", {"messages": [{"role": "user", "content": "Q2"},
                                                   {"role": "assistant", "content": "A2"}]})
    assert list(read_conversations(guide)) == [
        Conversation((Message("user", "Q1"), Message("assistant", "A1")), str(guide), 1, ("https://a",))]
    assert [c.messages for c in read_conversations(chat)] == [(Message("user", "Q2"), Message("assistant", "A2"))]


def test_first_problem_raises_data_error_naming_file_line_and_field(tmp_path):
    path = write_lines(tmp_path, "bad.jsonl", {"instruction": "Q", "response": "A"}, {"instruction": "Q"})
    with pytest.raises(DataError) as caught:
        list(read_conversations(path))
    assert (caught.value.path, caught.value.line, caught.value.field) == (str(path), 2, "response")
    assert str(caught.value).splitlines()[0] == f"{path}:2: field 'response': missing"


def test_invalid_json_error_keeps_the_column(tmp_path):
    path = write_lines(tmp_path, "bad.jsonl", '{"instruction": "Q" "response": "A"}')
    with pytest.raises(DataError, match=r":1: invalid JSON: Expecting ',' delimiter \(column 21\)"):
        list(read_conversations(path))


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        list(read_conversations(tmp_path / "none.jsonl"))


def test_conversation_from_record_detects_alpaca_and_accepts_an_explicit_format():
    alpaca = conversation_from_record({"instruction": "Q", "output": "A"}, "x.jsonl", 7)
    assert alpaca == Conversation((Message("user", "Q"), Message("assistant", "A")), "x.jsonl", 7)
    with pytest.raises(DataError, match="field 'messages': missing"):
        conversation_from_record({"instruction": "Q", "response": "A"}, "x.jsonl", 7, format="messages")
