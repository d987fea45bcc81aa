"""`source_urls: [""]` (ten records of the guide's dataset): a warning with file:line, and the empty entries
never reach the conversations, the written splits or the run's list of sources."""

from __future__ import annotations

import json

from data_files import write_lines

from conftest import tiny_run_config
from lorakit.data.records import read_conversations
from lorakit.data.split_files import write_split_files
from lorakit.data.validate import check_files
from lorakit.training.dataset import prepare_data


def records(n: int = 12) -> list[dict]:
    urls = {0: [""], 1: ["", "https://a.example", " "], 2: ["https://b.example"]}
    return [{"instruction": f"Q{i}?", "response": f"A{i}.", **({"source_urls": urls[i]} if i in urls else {})}
            for i in range(n)]


def test_empty_urls_are_warned_with_file_line_and_left_out(tmp_path):
    path = write_lines(tmp_path, "guide.jsonl", *records())
    report = check_files([path])
    assert [(issue.headline(), issue.hint) for issue in report.sorted_issues()] == [
        (f"{path}:1: warning: field 'source_urls': 1 empty URL left out (0 kept)",
         "Delete the empty strings, or the field if no URL is left."),
        (f"{path}:2: warning: field 'source_urls': 2 empty URLs left out (1 kept)",
         "Delete the empty strings, or the field if no URL is left."),
    ]
    assert report.exit_code() == 0 and report.examples == 12
    assert [c.source_urls for c in read_conversations(path)][:4] == [(), ("https://a.example",),
                                                                     ("https://b.example",), ()]


def test_written_splits_carry_no_empty_url(tmp_path):
    path = write_lines(tmp_path, "guide.jsonl", *records())
    write_split_files([path], tmp_path / "out", 0.2, 0.2, seed=1)
    written = [json.loads(line) for name in ("train", "validation", "test")
               for line in (tmp_path / "out" / f"{name}.jsonl").read_text().splitlines()]
    assert sorted(url for record in written for url in record.get("source_urls", [])) == [
        "https://a.example", "https://b.example"]


def test_the_run_records_only_real_urls(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setenv("LORAKIT_CACHE_DIR", str(tmp_path / "cache"))
    path = write_lines(tmp_path, "guide.jsonl", *records())
    prepared = prepare_data(tiny_run_config(tmp_path / "model", path, tmp_path / "run"), tokenizer)
    assert prepared.source_urls == ["https://a.example", "https://b.example"]  # what the manifest gets
