"""`redact_file`: a copy without identifiers; the input is never touched."""

from __future__ import annotations

import json

import pytest
from data_files import write_lines

from lorakit.data.phi_scan import scan_text
from lorakit.data.redact import redact_file, redact_text
from lorakit.errors import DataError

IDENTIFIERS = ["jane.doe@example.org", "555-123-4567", "123-45-6789", "00123456", "03/14/1962", "123 Main Street",
               "192.168.1.20", "Jane Doe"]
DIRTY = {"instruction": "Patient: Jane Doe, DOB: 03/14/1962, MRN: 00123456. Mail jane.doe@example.org",
         "input": "SSN 123-45-6789, lives at 123 Main Street, phone 555-123-4567, VPN 192.168.1.20",
         "response": "Take 5 mg twice daily; BP 120/80."}
CLEAN = {"instruction": "What is BP?", "response": "Blood pressure, e.g. 120/80."}


def test_redact_text_replaces_identifiers_and_keeps_keywords():
    assert redact_text("Patient: Jane Doe, DOB: 03/14/1962") == "Patient: [NAME], DOB: [DOB]"


def test_redacted_copy_contains_none_of_the_identifiers_and_the_input_is_unchanged(tmp_path):
    source = write_lines(tmp_path, "phi.jsonl", CLEAN, DIRTY, "not json: call 555-123-4567")
    before = source.read_bytes()
    summary = redact_file(source, tmp_path / "clean.jsonl")
    text = (tmp_path / "clean.jsonl").read_text()
    assert source.read_bytes() == before
    for identifier in IDENTIFIERS:
        assert identifier not in text
    lines = text.splitlines()
    assert lines[0] == json.dumps(CLEAN)  # untouched lines are copied byte for byte
    redacted = json.loads(lines[1])
    assert redacted["response"] == DIRTY["response"]
    assert all(scan_text(value) == [] for value in redacted.values())
    assert lines[2] == "not json: call [PHONE]"
    assert (summary.records, summary.changed_records, summary.unparsed_lines) == (2, 1, [3])
    assert dict(summary.by_kind) == {"name": 1, "dob": 1, "mrn": 1, "email": 1, "ssn": 1, "address": 1,
                                     "phone": 2, "ip": 1}


def test_json_array_and_nested_messages_are_redacted(tmp_path):
    source = tmp_path / "chat.json"
    source.write_text(json.dumps([{"messages": [{"role": "user", "content": "I am Mr. John Smith"},
                                                {"role": "assistant", "content": "Hello."}]}]))
    redact_file(source, tmp_path / "out.json")
    [record] = json.loads((tmp_path / "out.json").read_text())
    assert record["messages"][0]["content"] == "I am Mr. [NAME]"


def test_refuses_to_write_over_its_input_or_an_existing_file(tmp_path):
    source = write_lines(tmp_path, "phi.jsonl", DIRTY)
    with pytest.raises(DataError, match="is the input file; redaction never modifies its input"):
        redact_file(source, source, overwrite=True)
    (tmp_path / "exists.jsonl").write_text("keep")
    with pytest.raises(DataError, match="already exists"):
        redact_file(source, tmp_path / "exists.jsonl")
    assert (tmp_path / "exists.jsonl").read_text() == "keep"
