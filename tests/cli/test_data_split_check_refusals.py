"""`lorakit data split` never replaces its input nor (without --overwrite) existing files; `lorakit data check`
refuses a file given in two splits; a file of invalid lines is not also reported as "contains no records"."""

from __future__ import annotations

import json
from pathlib import Path

from lorakit.cli.app import run_cli

SPLITS = ("train", "validation", "test")


def write(path: Path, *records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def dataset(path: Path) -> Path:
    return write(path, *[{"instruction": f"Q{i}?", "response": f"A{i}."} for i in range(30)])


def run(capsys, *argv):
    code = run_cli([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_split_never_overwrites_its_input_even_with_overwrite(tmp_path, capsys):
    folder = tmp_path / "d"
    source = dataset(folder / "train.jsonl")
    before = source.read_bytes()
    for extra in ([], ["--overwrite"]):
        code, out, err = run(capsys, "data", "split", source, "-o", folder, *extra)
        assert code == 2 and out == ""
        assert err.splitlines() == [
            f"error: {source}: is an input file; splitting never modifies its input, so nothing was written",
            f"hint: Pass --out with another folder, e.g. --out {folder / 'splits'}.",
        ]
        assert source.read_bytes() == before
        assert sorted(p.name for p in folder.iterdir()) == ["train.jsonl"]  # nothing written, not even a partial


def test_split_input_given_under_another_name_is_still_refused(tmp_path, capsys):
    folder = tmp_path / "d"
    source = dataset(folder / "test.jsonl")
    before = source.read_bytes()
    other_name = folder / ".." / "d" / "test.jsonl"
    code, _, err = run(capsys, "data", "split", other_name, "-o", folder, "--overwrite")
    assert code == 2
    assert err.splitlines()[0] == (f"error: {folder / 'test.jsonl'}: is an input file ({other_name}); splitting "
                                   "never modifies its input, so nothing was written")
    assert source.read_bytes() == before and sorted(p.name for p in folder.iterdir()) == ["test.jsonl"]


def test_split_refuses_existing_outputs_unless_overwrite(tmp_path, capsys):
    source = dataset(tmp_path / "all.jsonl")
    out = tmp_path / "out"
    assert run(capsys, "data", "split", source, "-o", out)[0] == 0
    (out / "validation.jsonl").write_text("keep me\n")
    before = {name: (out / f"{name}.jsonl").read_bytes() for name in SPLITS}
    code, stdout, err = run(capsys, "data", "split", source, "-o", out, "--seed", "5")
    assert code == 2 and stdout == ""
    assert err.splitlines() == [
        f"error: {out / 'train.jsonl'}, {out / 'validation.jsonl'}, {out / 'test.jsonl'} already exist; "
        "nothing was written.",
        "hint: Pass --overwrite to replace them, or --out to write to another folder.",
    ]
    assert {name: (out / f"{name}.jsonl").read_bytes() for name in SPLITS} == before
    (out / "train.jsonl").unlink()
    (out / "test.jsonl").unlink()
    code, _, err = run(capsys, "data", "split", source, "-o", out)
    assert code == 2 and err.splitlines()[0] == (f"error: {out / 'validation.jsonl'} already exists; "
                                                 "nothing was written.")
    assert sorted(p.name for p in out.iterdir()) == ["validation.jsonl"]
    code, stdout, _ = run(capsys, "data", "split", source, "-o", out, "--overwrite")
    assert code == 0 and stdout.splitlines()[1] == f"validation: 3 examples -> {out / 'validation.jsonl'}"
    assert (out / "validation.jsonl").read_text() != "keep me\n"


def test_check_refuses_the_same_file_as_train_and_test(tmp_path, capsys):
    train = dataset(tmp_path / "splitout" / "train.jsonl")
    code, out, err = run(capsys, "data", "check", train, "--test", train)
    assert code == 2 and out == ""
    assert err.splitlines() == [
        f"error: {train}: is given both as the train split and as the test split; a file belongs to one split, "
        "so nothing was checked",
        "hint: Name each file once: as a train file, after --validation, or after --test.",
    ]


def test_check_refuses_the_same_file_as_validation_and_test_under_another_name(tmp_path, capsys):
    held_out = dataset(tmp_path / "splitout" / "held.jsonl")
    other_name = tmp_path / "splitout" / ".." / "splitout" / "held.jsonl"
    code, out, err = run(capsys, "data", "check", tmp_path / "x.jsonl", "--validation", held_out, "--test", other_name)
    assert code == 2 and out == ""
    assert err.splitlines()[0] == (f"error: {other_name}: is given both as the validation split (as {held_out}) and "
                                   "as the test split; a file belongs to one split, so nothing was checked")


def test_check_distinct_split_files_still_pass(tmp_path, capsys):
    train = write(tmp_path / "a.jsonl", {"instruction": "Q1", "response": "A1"})
    held_out = write(tmp_path / "b.jsonl", {"instruction": "Q2", "response": "A2"})
    missing = tmp_path / "c.jsonl"
    code, out, _ = run(capsys, "data", "check", train, "--validation", held_out, "--test", missing)
    assert code == 2  # c.jsonl is missing: reported as usual, not as a role conflict
    assert f"{held_out}: instruction, 1 record, 1 valid (validation split)" in out.splitlines()
    write(tmp_path / "c.jsonl", {"instruction": "Q3", "response": "A3"})
    code, out, _ = run(capsys, "data", "check", train, "--validation", held_out, "--test", tmp_path / "c.jsonl")
    assert code == 0 and f"{tmp_path / 'c.jsonl'}: instruction, 1 record, 1 valid (test split)" in out.splitlines()


def test_check_file_of_invalid_lines_reports_only_the_line_errors(tmp_path, capsys):
    path = tmp_path / "foo.txt"
    path.write_text("hello\n")
    code, out, _ = run(capsys, "data", "check", path)
    assert code == 2
    assert out.splitlines() == [
        f"{path}:1:1: error: invalid JSON: Expecting value",
        "    fix: Each line must be one complete JSON object, e.g. {\"instruction\": \"...\", \"response\": \"...\"}.",
        f"{path}: unknown format, 0 records, 0 valid (train split)",
        "failed: 0 valid examples; 1 error(s), 0 warning(s)",
        "note: lengths were not checked; pass --tokenizer DIR or --config",
    ]
