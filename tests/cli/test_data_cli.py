"""`lorakit data ...` end to end through `run_cli`: exit codes, exact report lines, files written; and the
gate in front of `lorakit train`: a dataset with errors never reaches the model or the training loop."""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import pytest
import yaml

from conftest import train_with
from lorakit.cli.app import run_cli

TOKENIZER = str(Path(__file__).resolve().parents[1] / "fixtures" / "smollm2-tokenizer")
SPLITS = ("train", "validation", "test")


def write(path: Path, *records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def qa(question="What is BP?", answer="Blood pressure."):
    return {"instruction": question, "response": answer}


def dataset(path: Path) -> Path:
    """30 distinct records: `data split` makes 24 train, 3 validation, 3 test of them."""
    return write(path, *[qa(f"Q{i}?", f"A{i}.") for i in range(30)])


def run(capsys, *argv):
    code = run_cli([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_check_clean_file_exits_zero(tmp_path, capsys):
    path = write(tmp_path / "ok.jsonl", qa("Q1", "A1"), qa("Q2", "A2"))
    code, out, _ = run(capsys, "data", "check", str(path))
    assert code == 0
    assert out.splitlines() == [f"{path}: instruction, 2 records, 2 valid (train split)",
                                "ok: 2 examples, no problems found",
                                "note: lengths were not checked; pass --tokenizer DIR or --config"]


def test_check_reports_every_problem_with_fix_and_exits_two(tmp_path, capsys):
    path = write(tmp_path / "bad.jsonl", qa(), '{"instruction": "Q2",', '"response": "A2"}', "",
                 '{"instruction": "Q3" "response": "A3"}', {"instruction": "Q4"}, qa())
    code, out, _ = run(capsys, "data", "check", str(path))
    assert code == 2
    assert out.splitlines() == [
        f"{path}:2: error: one record is spread over lines 2-3",
        "    fix: JSONL needs each record on a single line: join these lines (e.g. `jq -c .`).",
        f"{path}:4: warning: blank line",
        "    fix: Delete it: a JSONL file has exactly one JSON object per line.",
        f"{path}:5:22: error: invalid JSON: Expecting ',' delimiter",
        "    fix: A comma is missing between two fields or list items, just before this column.",
        f"{path}:6: error: field 'response': missing",
        '    fix: Add a non-empty "response" string.',
        f"{path}:7: warning: exact duplicate of {path}:1",
        "    fix: Delete one copy: duplicates over-weight an example.",
        f"{path}: instruction, 4 records, 2 valid (train split)",
        "failed: 2 valid examples; 3 error(s), 2 warning(s)",
        "note: lengths were not checked; pass --tokenizer DIR or --config",
    ]


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


def test_warnings_fail_only_with_strict(tmp_path, capsys):
    path = write(tmp_path / "dup.jsonl", qa(), qa())
    assert run(capsys, "data", "check", str(path))[0] == 0
    code, out, _ = run(capsys, "data", "check", "--strict", str(path))
    assert code == 2 and "failed: 2 valid examples; 0 error(s), 1 warning(s) (--strict: warnings fail)" in out


def test_json_report(tmp_path, capsys):
    path = write(tmp_path / "x.jsonl", qa(), {"instruction": "Q"})
    code, out, _ = run(capsys, "data", "check", "--json", str(path))
    report = json.loads(out)
    assert code == 2 and report["ok"] is False and report["errors"] == 1
    assert [(i["line"], i["code"], i["field"]) for i in report["issues"]] == [(2, "missing-field", "response")]


def test_leakage_between_named_split_files(tmp_path, capsys):
    train = write(tmp_path / "a.jsonl", qa("Q1", "A1"), qa("Q2", "A2"))
    held_out = write(tmp_path / "b.jsonl", qa("Q2", "A2"))
    assert run(capsys, "data", "check", str(train), str(held_out))[0] == 0  # both train: a duplicate, a warning
    code, out, _ = run(capsys, "data", "check", str(train), "--test", str(held_out))
    assert code == 2
    assert (f"{held_out}:1: error: the same example as {train}:2 is in the train split and in the test split "
            "(leakage)") in out.splitlines()


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
    train = write(tmp_path / "a.jsonl", qa("Q1", "A1"))
    held_out = write(tmp_path / "b.jsonl", qa("Q2", "A2"))
    missing = tmp_path / "c.jsonl"
    code, out, _ = run(capsys, "data", "check", train, "--validation", held_out, "--test", missing)
    assert code == 2  # c.jsonl is missing: reported as usual, not as a role conflict
    assert f"{held_out}: instruction, 1 record, 1 valid (validation split)" in out.splitlines()
    write(tmp_path / "c.jsonl", qa("Q3", "A3"))
    code, out, _ = run(capsys, "data", "check", train, "--validation", held_out, "--test", tmp_path / "c.jsonl")
    assert code == 0 and f"{tmp_path / 'c.jsonl'}: instruction, 1 record, 1 valid (test split)" in out.splitlines()


def test_length_check_with_a_tokenizer(tmp_path, capsys):
    path = write(tmp_path / "long.jsonl", qa("Q", "word " * 600))
    code, out, _ = run(capsys, "data", "check", str(path), "--tokenizer", TOKENIZER)
    assert code == 0  # truncation is a warning; the default max_length comes from config.py (512)
    assert (f"{path}:1: warning: 711 tokens (system prompt and chat template included), more than max_length 512; "
            "it will be truncated") in out.splitlines()
    code, out, _ = run(capsys, "data", "check", str(path), "--tokenizer", TOKENIZER, "--max-length", "1000")
    assert code == 0 and "no problems found" in out


def test_privacy_findings_fail_masked_and_can_be_allowed(tmp_path, capsys):
    path = write(tmp_path / "phi.jsonl", qa("Patient: Jane Doe, DOB: 03/14/1962. Is her BP fine?", "Ask a clinician."))
    code, out, err = run(capsys, "data", "check", str(path))
    assert code == 2
    assert f"{path}:1: error: field 'instruction': possible date of birth: \"Patient: J*** ***, DOB: 0*/**/****. Is " \
           "her BP fine?\"" in out.splitlines()
    assert "Jane" not in out + err and "03/14" not in out + err
    assert run(capsys, "data", "check", "--allow-phi", str(path))[0] == 0
    assert run(capsys, "data", "check", "--no-phi-scan", str(path))[0] == 0


def test_redact_writes_a_clean_copy_and_leaves_the_input(tmp_path, capsys):
    source = write(tmp_path / "phi.jsonl", qa("Mail jane.doe@example.org or call 555-123-4567", "OK."), qa())
    before = source.read_bytes()
    code, out, _ = run(capsys, "data", "redact", str(source), str(tmp_path / "clean.jsonl"))
    assert code == 0 and source.read_bytes() == before
    assert out.strip() == f"{tmp_path / 'clean.jsonl'}: 2 records, 1 redacted (1 email, 1 phone)"
    assert run(capsys, "data", "check", str(tmp_path / "clean.jsonl"))[0] == 0
    code, _, err = run(capsys, "data", "redact", str(source), str(source))
    assert code == 2 and "is the input file; redaction never modifies its input" in err


def test_redact_names_and_writes_the_copy_of_a_table_like_the_studio(tmp_path, capsys):
    """As tests/studio/test_studio_guards.py's redacted table: the copy is JSON Lines, named q.redacted.jsonl."""
    source = write(tmp_path / "q.csv", "instruction,response", '"Call me at 555-123-4567, what is BP?",Blood pressure.',
                   "What is HR?,Heart rate.")
    code, out, _ = run(capsys, "data", "redact", source)
    assert code == 0 and out.strip() == f"{tmp_path / 'q.redacted.jsonl'}: 2 records, 1 redacted (1 phone)"
    assert json.loads((tmp_path / "q.redacted.jsonl").read_text().splitlines()[0])["instruction"] == \
        "Call me at [PHONE], what is BP?"
    code, _, err = run(capsys, "data", "redact", source, tmp_path / "q.redacted.csv")
    assert code == 2
    assert err.split() == (
        f"error: {tmp_path / 'q.redacted.csv'}: must end in .jsonl or .json: the redacted copy is JSON Lines (or a "
        f"JSON array), whatever the input's format\nhint: Write it to {tmp_path / 'q.redacted.jsonl'}.").split()
    assert not (tmp_path / "q.redacted.csv").exists()
    # A .jsonl input written as a .json output is one JSON array, not JSON Lines under a .json name.
    jsonl = write(tmp_path / "p.jsonl", qa("Call 555-123-4567", "OK."))
    assert run(capsys, "data", "redact", jsonl, tmp_path / "p.json")[0] == 0
    assert json.loads((tmp_path / "p.json").read_text()) == [{"instruction": "Call [PHONE]", "response": "OK."}]


def test_stats_with_histogram_and_json(tmp_path, capsys):
    path = write(tmp_path / "d.jsonl", qa("Q", "A"), qa("What is BP?", "Blood pressure."), qa("Q", "word " * 40))
    png = tmp_path / "h.png"
    code, out, _ = run(capsys, "data", "stats", str(path), "--tokenizer", TOKENIZER, "--max-length", "140",
                       "--histogram", str(png), "--json")
    stats = json.loads(out)
    assert code == 0 and png.read_bytes()[:4] == b"\x89PNG"
    assert (stats["examples"], stats["truncated"], stats["histogram"]) == (3, 1, str(png))
    assert stats["percentiles"] == {"min": 112, "p50": 117, "p90": 151, "p95": 151, "p99": 151, "max": 151}
    assert stats["trained_tokens"] == 2 + 4 + (41 - 10)  # the cut removes 10 answer tokens and the final newline
    code, out, _ = run(capsys, "data", "stats", str(path), "--tokenizer", TOKENIZER, "--no-histogram")
    assert code == 0 and "trained tokens" in out and "histogram" not in out


def test_split_writes_three_deterministic_files(tmp_path, capsys):
    path = dataset(tmp_path / "all.jsonl")
    code, out, _ = run(capsys, "data", "split", str(path), "--out", str(tmp_path / "out"), "--seed", "3")
    assert code == 0
    assert out.splitlines() == [f"train: 24 examples -> {tmp_path / 'out' / 'train.jsonl'}",
                                f"validation: 3 examples -> {tmp_path / 'out' / 'validation.jsonl'}",
                                f"test: 3 examples -> {tmp_path / 'out' / 'test.jsonl'}"]
    files = [str(tmp_path / "out" / f"{name}.jsonl") for name in SPLITS]
    assert run(capsys, "data", "check", *files)[0] == 0  # no leakage between the written splits


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


def test_usage_errors_exit_two(tmp_path, capsys):
    path = write(tmp_path / "ok.jsonl", qa())
    assert run(capsys, "data", "check", str(path), "--format", "csv")[0] == 2
    assert run(capsys, "data", "check")[0] == 2
    assert run(capsys, "data", "stats", str(path))[0] == 2  # statistics need a tokenizer


def test_check_reads_the_config(tmp_path, capsys):
    data = write(tmp_path / "train.jsonl", qa("Q", "word " * 100))
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"model": {"max_length": 64}, "data": {"train_file": str(data),
                                                                            "system_prompt": "Be brief."}}))
    code, out, _ = run(capsys, "data", "check", "--config", str(config), "--tokenizer", TOKENIZER)
    assert code == 0
    assert f"{data}:1: warning: 120 tokens (system prompt and chat template included), more than max_length 64; " \
           "it will be truncated" in out.splitlines()
    code, out, _ = run(capsys, "data", "check", "--config", str(config), "--tokenizer", TOKENIZER,
                       "--set", "model.max_length=200")
    assert code == 0 and "no problems found" in out


# The gate in front of training -------------------------------------------------------------------------


def train_config(tmp_path: Path, model_dir: Path, data: Path) -> Path:
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({
        "output_dir": str(tmp_path / "run"),
        "model": {"name": str(model_dir), "max_length": 256},
        "training": {"max_steps": 2, "batch_size": 2, "eval_steps": 1, "save_steps": 1},
        "data": {"train_file": str(data), "validation_split": 0.2, "test_split": 0.2},
    }))
    return config


class ReachedModelLoading(Exception):
    """Raised by the patched model loader: the data gate let the data through."""


@pytest.fixture
def trainer_spies(monkeypatch, tmp_path):
    from lorakit.training import session
    from lorakit.training.trainer import TrainerHooks

    monkeypatch.setenv("LORAKIT_CACHE_DIR", str(tmp_path / "cache"))
    spies = {"load_base_model": mock.Mock(side_effect=ReachedModelLoading), "steps": mock.Mock()}
    monkeypatch.setattr(session, "load_base_model", spies["load_base_model"])

    class Steps(TrainerHooks):
        def step_starting(self, trainer, step, groups):
            spies["steps"](step)

    train_with(monkeypatch, hooks=Steps())
    return spies


def test_train_refuses_data_with_errors_before_any_model_is_loaded(tmp_path, capsys, tiny_llama_dir, trainer_spies):
    data = write(tmp_path / "bad.jsonl", *[qa(f"Q{i}", f"A{i}") for i in range(10)], {"instruction": "Q"}, "{oops")
    code, _, err = run(capsys, "train", str(train_config(tmp_path, tiny_llama_dir, data)))
    assert code == 2
    assert f"{data}: 2 problems in the data; training did not start:" in err
    assert f"{data}:11: error: field 'response': missing" in err
    assert f"{data}:12:2: error: invalid JSON: Expecting property name enclosed in double quotes" in err
    assert trainer_spies["load_base_model"].call_count == 0 and trainer_spies["steps"].call_count == 0


def test_train_refuses_phi_unless_allowed(tmp_path, capsys, tiny_llama_dir, trainer_spies):
    data = write(tmp_path / "phi.jsonl", *[qa(f"Q{i}", f"A{i}") for i in range(10)], qa("Call 555-123-4567", "No."))
    config = str(train_config(tmp_path, tiny_llama_dir, data))
    code, _, err = run(capsys, "train", config)
    assert code == 2 and "possible phone number" in err and "555-123" not in err and "--allow-phi" in err
    assert trainer_spies["load_base_model"].call_count == 0
    with pytest.raises(ReachedModelLoading):
        run_cli(["train", config, "--allow-phi"])


def test_train_with_skip_invalid_goes_on_and_lists_the_skipped_lines(tmp_path, capsys, tiny_llama_dir, trainer_spies):
    folder = tmp_path / ("a-long-folder-name-" * 8)  # longer than any terminal line
    folder.mkdir()
    data = write(folder / "bad.jsonl", *[qa(f"Q{i}", f"A{i}") for i in range(10)], {"instruction": "Q"}, "{oops")
    with pytest.raises(ReachedModelLoading):
        run_cli(["train", str(train_config(tmp_path, tiny_llama_dir, data)), "--skip-invalid"])
    err = capsys.readouterr().err  # not a terminal: one unwrapped line, whatever the path length
    assert f"WARNING  --skip-invalid: skipped 2 line(s) of {data}: 11-12\n" in err
