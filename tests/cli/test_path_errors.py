"""An output path that cannot be written (a file where a folder must be) is one error line naming the path, exit 2,
not a traceback; missing folders of an output path are made."""

from __future__ import annotations

import pytest

from conftest import write_qa_jsonl
from lorakit.cli.app import run_cli

HINT = ("hint: check the path: its folders must be folders (not files) you may write to, and an output file cannot "
        "replace a folder\n")


def test_a_file_where_a_folder_must_be_is_an_error_naming_it(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_qa_jsonl(tmp_path / "qa.jsonl")
    (tmp_path / "afile").write_text("")
    assert run_cli(["data", "redact", "qa.jsonl", "afile/sub/out.jsonl"]) == 2
    assert capsys.readouterr().err == "error: afile/sub: Not a directory\n" + HINT


def test_missing_folders_of_an_output_are_made(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_qa_jsonl(tmp_path / "qa.jsonl")
    assert run_cli(["data", "redact", "qa.jsonl", "new/sub/out.jsonl"]) == 0
    assert (tmp_path / "new" / "sub" / "out.jsonl").is_file()


def test_debug_keeps_the_traceback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_qa_jsonl(tmp_path / "qa.jsonl")
    (tmp_path / "afile").write_text("")
    with pytest.raises(NotADirectoryError):
        run_cli(["--debug", "data", "redact", "qa.jsonl", "afile/sub/out.jsonl"])
