""""contains no records" only for files that truly hold none; `write_split_files` refuses to replace files."""

from __future__ import annotations

import pytest
from data_files import write_lines

from lorakit.data.split_files import write_split_files
from lorakit.data.validate import check_files
from lorakit.errors import DataError, OutputExistsError


def headlines(report):
    return [issue.headline() for issue in report.sorted_issues()]


def test_invalid_lines_are_not_also_reported_as_no_records(tmp_path):
    path = write_lines(tmp_path, "foo.txt", "hello", "{oops")
    report = check_files([path])
    assert [(i.line, i.code) for i in report.sorted_issues()] == [(1, "invalid-json"), (2, "invalid-json")]
    assert "contains no records" not in "\n".join(headlines(report))


def test_files_without_records_still_say_so(tmp_path):
    blank = write_lines(tmp_path, "blank.jsonl", "", "")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    report = check_files([empty, blank])
    assert headlines(report) == [f"{empty}: error: contains no records",
                                 f"{blank}: error: contains no records",
                                 f"{blank}:1: warning: blank line",
                                 f"{blank}:2: warning: blank line"]


def qa(i: int) -> dict:
    return {"instruction": f"Question {i}?", "response": f"Answer {i}."}


def test_write_split_files_refuses_an_input_file_as_target(tmp_path):
    source = write_lines(tmp_path, "train.jsonl", *[qa(i) for i in range(20)])
    before = source.read_bytes()
    with pytest.raises(DataError, match="is an input file; splitting never modifies its input, so nothing was written"):
        write_split_files([source], tmp_path, 0.1, 0.1, seed=1, overwrite=True)
    assert source.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["train.jsonl"]


def test_write_split_files_refuses_existing_targets_unless_overwrite(tmp_path):
    source = write_lines(tmp_path, "all.jsonl", *[qa(i) for i in range(20)])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "test.jsonl").write_text("old\n")
    with pytest.raises(OutputExistsError, match="test.jsonl already exists; nothing was written"):
        write_split_files([source], tmp_path / "out", 0.1, 0.1, seed=1)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["test.jsonl"]
    written = write_split_files([source], tmp_path / "out", 0.1, 0.1, seed=1, overwrite=True)
    assert sum(count for _, count in written.values()) == 20
    assert (tmp_path / "out" / "test.jsonl").read_text() != "old\n"
