"""CSV/TSV data files: read with the csv module into the same records as JSONL, with line numbers in every
problem; a CSV saved as .jsonl is named as a table in one sentence instead of an invalid-JSON error per row."""

from __future__ import annotations

import hashlib

import pytest

from lorakit.cli.app import run_cli
from lorakit.data.issues import Issue
from lorakit.data.sources import RawRecord, open_sources
from lorakit.data.validate import check_files


def read_all(path):
    items, digest = [], hashlib.sha256()
    for source in open_sources(path, digest):
        items.extend(source.read())
    return items, digest.hexdigest()


def test_csv_rows_become_records_starting_at_their_line(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_bytes(b'instruction,input,response,source_urls\n'
                     b'What is BP?,,"Blood pressure, the force of blood.",https://a.example https://b.example\n'
                     b'"A question\nover two lines?",Adult,"She said ""rest"".",\n'
                     b'\n'
                     b'Last?,,Yes.,\n')
    items, sha = read_all(path)
    assert [(i.line, i.value) for i in items if isinstance(i, RawRecord)] == [
        (2, {"instruction": "What is BP?", "input": "", "response": "Blood pressure, the force of blood.",
             "source_urls": ["https://a.example", "https://b.example"]}),
        (3, {"instruction": "A question\nover two lines?", "input": "Adult", "response": 'She said "rest".',
             "source_urls": []}),
        (6, {"instruction": "Last?", "input": "", "response": "Yes.", "source_urls": []}),
    ]
    assert [i for i in items if isinstance(i, Issue)] == []
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()


def test_tsv_and_semicolon_csv_with_an_excel_bom(tmp_path):
    tsv = tmp_path / "qa.tsv"
    tsv.write_text("instruction\toutput\nQ1\tA, with a comma\n")
    semicolon = tmp_path / "excel.csv"
    semicolon.write_bytes("\ufeffinstruction;response\nQ1;A1\n".encode())
    assert [(i.line, i.value) for i in read_all(tsv)[0]] == [(2, {"instruction": "Q1", "output": "A, with a comma"})]
    items = read_all(semicolon)[0]
    assert [i.headline() for i in items if isinstance(i, Issue)] == [
        f"{semicolon}:1:1: warning: the file starts with a UTF-8 byte-order mark (BOM)"]
    assert [(i.line, i.value) for i in items if isinstance(i, RawRecord)] == [(2, {"instruction": "Q1", "response": "A1"})]


def test_csv_problems_carry_line_numbers(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text('instruction,response\nQ1,A1\nQ2,A2,extra\nQ3,\n"Q4,"A4"\n')
    report = check_files([path])
    assert [issue.headline() for issue in report.errors] == [
        f"{path}:3: error: has 3 fields, but the header has 2",
        f"{path}:4: error: field 'response': is empty",
        f"{path}:5: error: cannot be read as CSV: ',' expected after '\"'",
    ]


def test_csv_header_problems_and_an_empty_file(tmp_path):
    repeated = tmp_path / "repeated.csv"
    repeated.write_text("instruction,response,response\nQ,A,B\n")
    empty = tmp_path / "empty.csv"
    empty.write_text("\n\n")
    assert [i.headline() for i in read_all(repeated)[0]] == [
        f"{repeated}:1: error: the header row names response more than once"]
    assert [i.headline() for i in read_all(empty)[0]] == [f"{empty}: error: holds no header row and no records"]


@pytest.mark.parametrize("name, separator, table, suffix", [("data.jsonl", ",", "comma", "csv"),
                                                            ("data.txt", "\t", "tab", "tsv")])
def test_a_table_saved_as_jsonl_is_named_in_one_sentence(tmp_path, name, separator, table, suffix):
    path = tmp_path / name
    path.write_text("\n".join(separator.join(row) for row in
                              [("instruction", "response")] + [(f"Q{i}", f"A{i}") for i in range(55)]) + "\n")
    report = check_files([path])
    assert [issue.headline() for issue in report.errors] == [
        f"{path}: error: is a {table}-separated table with a header row, not JSON Lines"]
    assert report.errors[0].hint == (f"Rename it to .{suffix}: lorakit reads tables whose header names the columns "
                                     "instruction, input (optional) and response (or output).")


def test_train_reads_a_csv_file(tiny_llama_dir, tmp_path, capsys):
    import csv

    from conftest import QA_PAIRS, write_config_file

    config = write_config_file(tmp_path, tiny_llama_dir, seed=1, training={"batch_size": 2, "max_steps": 1})
    data = tmp_path / "qa.csv"
    with open(data, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["instruction", "response"])
        writer.writerows(QA_PAIRS)
    assert run_cli(["train", str(config), "--set", f"data.train_file={data}"]) == 0
    assert "data: 10 train / 1 validation / 1 test examples" in capsys.readouterr().err
