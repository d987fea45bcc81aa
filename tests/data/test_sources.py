"""Reading raw records: encodings, BOMs, blank lines, invalid JSON, records broken over lines, .json, datasets."""

from __future__ import annotations

import hashlib
import json

import pytest
from data_files import write_lines

from lorakit.data.issues import Issue
from lorakit.data.sources import RawRecord, open_sources, role_from_name


def read_all(path):
    items = []
    digest = hashlib.sha256()
    for source in open_sources(path, digest):
        items.extend(source.read())
    return items, digest.hexdigest()


def records(items):
    return [(item.line, item.value) for item in items if isinstance(item, RawRecord)]


def headlines(items):
    found = [item for item in items if isinstance(item, Issue)]
    found += [issue for item in items if isinstance(item, RawRecord) for issue in item.issues]
    return sorted(issue.headline() for issue in found)


def test_clean_jsonl_gives_records_with_line_numbers_and_the_file_hash(tmp_path):
    path = write_lines(tmp_path, "ok.jsonl", {"a": 1}, {"b": 2})
    items, sha = read_all(path)
    assert records(items) == [(1, {"a": 1}), (2, {"b": 2})]
    assert headlines(items) == []
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()


def test_record_spread_over_several_lines_is_recognised_and_the_next_record_keeps_its_line(tmp_path):
    path = write_lines(tmp_path, "spread.jsonl", {"a": 1}, '{"instruction": "Q",', '  "response":', '  "A"}', {"b": 2})
    items, _ = read_all(path)
    assert headlines(items) == [f"{path}:2: error: one record is spread over lines 2-4"]
    assert records(items) == [(1, {"a": 1}), (2, {"instruction": "Q", "response": "A"}), (5, {"b": 2})]


def test_string_broken_by_a_raw_line_break_is_a_spread_record(tmp_path):
    path = write_lines(tmp_path, "broken.jsonl", '{"instruction": "Q", "response": "first line', 'second line"}')
    items, _ = read_all(path)
    assert headlines(items) == [f"{path}:1: error: one record is spread over lines 1-2"]


def test_broken_line_followed_by_a_good_record_is_invalid_json_not_a_spread_record(tmp_path):
    path = write_lines(tmp_path, "cut.jsonl", '{"instruction": "Q", "response":',
                       {"instruction": "Q2", "response": "A2"})
    items, _ = read_all(path)
    assert headlines(items) == [f"{path}:1:33: error: invalid JSON: Expecting value"]
    assert records(items) == [(2, {"instruction": "Q2", "response": "A2"})]


def test_pretty_printed_messages_record_is_one_spread_record(tmp_path):
    path = write_lines(tmp_path, "pretty.jsonl", '{"messages": [', '  {"role": "user", "content": "hi"},',
                       '  {"role": "assistant", "content": "yo"}', "]}")
    items, _ = read_all(path)
    assert headlines(items) == [f"{path}:1: error: one record is spread over lines 1-4"]
    assert [line for line, _ in records(items)] == [1]


def test_pretty_printed_array_in_a_jsonl_file(tmp_path):
    path = write_lines(tmp_path, "array.jsonl", "[", '  {"a": 1},', '  {"b": 2}', "]")
    items, _ = read_all(path)
    assert headlines(items) == [
        f"{path}:1: error: a JSON array spread over lines 1-4; a .jsonl file has one object per line"]
    assert records(items) == []


@pytest.mark.parametrize(
    ("line", "expected", "hint_start"),
    [
        ('{"instruction": "Q" "response": "A"}', "1:21: error: invalid JSON: Expecting ',' delimiter", "A comma"),
        ('{"instruction": "Q", "response": "A}', "1:34: error: invalid JSON: Unterminated string starting at",
         "A closing double quote"),
        ("{'instruction': 'Q'}", "1:2: error: invalid JSON: Expecting property name enclosed in double quotes",
         "Keys need double quotes"),
        ('{"a": 1} {"b": 2}', "1:10: error: invalid JSON: Extra data", "More than one JSON value"),
        ("[" * 100_000, "1: error: invalid JSON: nested too deeply", "A training record"),
    ],
)
def test_invalid_json_names_line_column_and_fix(tmp_path, line, expected, hint_start):
    path = write_lines(tmp_path, "bad.jsonl", line)
    items, _ = read_all(path)
    issues = [item for item in items if isinstance(item, Issue)]
    assert [issue.headline() for issue in issues] == [f"{path}:{expected}"]
    assert issues[0].hint.startswith(hint_start)


def test_non_utf8_byte_reports_line_column_and_byte_offset_and_reading_goes_on(tmp_path):
    path = write_lines(tmp_path, "latin1.jsonl", {"a": 1}, b'{"b": "caf\xe9"}', {"c": 3})
    items, _ = read_all(path)
    [issue] = [i for item in items if isinstance(item, RawRecord) for i in item.issues]
    assert issue.headline() == f"{path}:2:11: error: not valid UTF-8: byte 0xE9 at byte offset 19 of the file"
    assert issue.hint == ("Re-save the file as UTF-8 (in Windows-1252 this byte is 'é', "
                          "so it was probably saved that way).")
    assert [line for line, _ in records(items)] == [1, 2, 3]


def test_bom_at_file_start_is_a_warning_and_the_record_is_read(tmp_path):
    path = write_lines(tmp_path, "bom.jsonl", b'\xef\xbb\xbf{"a": 1}', {"b": 2})
    items, _ = read_all(path)
    assert headlines(items) == [f"{path}:1:1: warning: the file starts with a UTF-8 byte-order mark (BOM)"]
    assert records(items) == [(1, {"a": 1}), (2, {"b": 2})]


def test_bom_inside_the_file_points_at_concatenation(tmp_path):
    path = write_lines(tmp_path, "cat.jsonl", {"a": 1}, b'\xef\xbb\xbf{"b": 2}')
    items, _ = read_all(path)
    assert headlines(items) == [f"{path}:2:1: warning: a UTF-8 byte-order mark (BOM) starts this line"]
    assert records(items) == [(1, {"a": 1}), (2, {"b": 2})]


def test_utf16_file_is_one_error(tmp_path):
    path = tmp_path / "wide.jsonl"
    path.write_text('{"instruction": "Q", "response": "A"}\n', encoding="utf-16")
    items, _ = read_all(path)
    assert [i.headline() for i in items] == [f"{path}: error: the file is UTF-16 encoded, not UTF-8"]


def test_blank_lines_are_warnings_at_their_lines(tmp_path):
    path = write_lines(tmp_path, "blank.jsonl", {"a": 1}, "", "   ", {"b": 2}, "")
    items, _ = read_all(path)
    assert headlines(items) == [f"{path}:{n}: warning: blank line" for n in (2, 3, 5)]


def test_missing_file_and_plain_folder(tmp_path):
    items, _ = read_all(tmp_path / "nope.jsonl")
    assert [i.headline() for i in items] == [f"{tmp_path / 'nope.jsonl'}: error: file not found"]
    items, _ = read_all(tmp_path)
    assert [i.headline() for i in items] == [
        f"{tmp_path}: error: is a folder, but not a dataset saved with `save_to_disk`"]


def test_json_array_file_gives_each_record_its_line(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('[\n  {"a": 1},\n\n  {"b": 2}\n]\n')
    items, sha = read_all(path)
    assert records(items) == [(2, {"a": 1}), (4, {"b": 2})]
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()


def test_json_array_file_with_an_error_names_its_line_and_column(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('[\n  {"a": 1},\n  {"b" 2}\n]\n')
    items, _ = read_all(path)
    assert records(items) == [(2, {"a": 1})]
    assert [i.headline() for i in items if isinstance(i, Issue)] == [
        f"{path}:3:8: error: invalid JSON: Expecting ':' delimiter"]


def test_json_file_holding_json_lines_is_read_as_jsonl(tmp_path):
    path = tmp_path / "lines.json"
    path.write_text('{"a": 1}\n{"b": 2}\n')
    assert records(read_all(path)[0]) == [(1, {"a": 1}), (2, {"b": 2})]


def test_saved_dataset_and_dataset_dict_are_read_with_split_roles(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = {"instruction": ["Q1", "Q2"], "response": ["A1", "A2"]}
    datasets.Dataset.from_dict(rows).save_to_disk(tmp_path / "single")
    [source] = open_sources(tmp_path / "single", hashlib.sha256())
    assert [(r.line, r.value) for r in source.read()] == [
        (1, {"instruction": "Q1", "response": "A1"}), (2, {"instruction": "Q2", "response": "A2"})]
    both = datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows),
                                 "test": datasets.Dataset.from_dict({k: v[:1] for k, v in rows.items()})})
    both.save_to_disk(tmp_path / "dict")
    sources = open_sources(tmp_path / "dict", hashlib.sha256())
    assert sorted((s.path, s.role) for s in sources) == [
        (f"{tmp_path / 'dict'}[test]", "test"), (f"{tmp_path / 'dict'}[train]", "train")]


@pytest.mark.parametrize(("name", "role"), [("train.jsonl", "train"), ("data_val.jsonl", "validation"),
                                            ("dev.json", "validation"), ("Test-Set.jsonl", "test"),
                                            ("contest.jsonl", "train"), ("medical_qa.jsonl", "train")])
def test_role_from_name(name, role):
    assert role_from_name(name) == role


def test_huge_integer_is_an_issue_not_a_crash(tmp_path):
    path = write_lines(tmp_path, "big.jsonl", json.dumps({"a": 1})[:-1] + ', "n": ' + "9" * 5000 + "}")
    items, _ = read_all(path)
    [issue] = [item for item in items if isinstance(item, Issue)]
    assert issue.code == "invalid-json" and issue.line == 1
