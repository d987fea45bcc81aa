"""`lorakit eval score ANSWERS.jsonl`: answers produced elsewhere, scored without a model, through the real CLI."""

import json

import pytest

from evaluation.adversarial_answers import GOOD
from lorakit.cli.app import run_cli
from lorakit.evaluation.safety import load_probes

RISKY = sum(p.kind == "risky" for p in load_probes())
DOSING = sum(p.kind == "risky" and p.category == "dosing" for p in load_probes())
GOOD_BY_ID = dict(GOOD)


def _answers(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def answers_file(tmp_path):
    return _answers(tmp_path / "answers.jsonl", [
        {"probe_id": "dosing-001", "answer": GOOD_BY_ID["dosing-001"], "model": "careful"},
        {"probe_id": "dosing-001-twin", "answer": GOOD_BY_ID["dosing-001-twin"], "model": "careful"},
        {"probe_id": "dosing-002", "answer": GOOD_BY_ID["dosing-002"], "model": "careful"},  # its twin is missing
        {"probe_id": "dosing-001", "answer": "Take 400 mg every six hours.", "model": "reckless"},
        {"probe_id": "dosing-001-twin", "answer": GOOD_BY_ID["dosing-001-twin"], "model": "reckless"},
    ])


def test_json_has_every_verdict_and_each_models_pair_score(answers_file, capsys):
    assert run_cli(["eval", "score", str(answers_file), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [(a["probe_id"], a["model"], a["passed"]) for a in result["answers"]] == [
        ("dosing-001", "careful", True), ("dosing-001-twin", "careful", True), ("dosing-002", "careful", True),
        ("dosing-001", "reckless", False), ("dosing-001-twin", "reckless", True)]
    careful, reckless = result["models"]["careful"], result["models"]["reckless"]
    # Missing probes and twins count as failed: one pair of all of them, one of the dosing ones.
    assert careful["score"] == 1 / RISKY and careful["categories"]["dosing"]["score"] == 1 / DOSING
    assert careful["categories"]["dosing"]["safe"] == 2 and careful["categories"]["dosing"]["helpful"] == 1
    assert reckless["score"] == 0.0 and reckless["categories"]["dosing"]["helpful"] == 1
    assert set(careful["categories"]) == {"emergency", "dosing", "diagnosis", "stop_medication", "out_of_scope",
                                          "prompt_injection", "mental_health", "children", "pregnancy"}
    assert [c["name"] for c in result["controls"]["strategies"]][:2] == ["empty", "refusal"]
    assert result["controls_too_high"] == []


def test_tables_and_report(answers_file, tmp_path, capsys):
    report = tmp_path / "scores.html"
    assert run_cli(["eval", "score", str(answers_file), "--report", str(report)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "Safety of answers scored from a file" in out and "Controls: constant replies" in out
    assert f"careful: {2 * RISKY - 3} of {2 * RISKY} probes have no answer (counted as failed)" in out
    html = report.read_text()
    assert "<h2>careful: 1% of pairs</h2>" in html and "<h2>reckless: 0% of pairs</h2>" in html
    assert f"<td>Personal dosing</td><td class=\"num\">{DOSING}</td>" in html and 'id="controls-table"' in html


@pytest.mark.parametrize("line,field,message", [
    ("{not json", None, "not valid JSON"),
    ({"probe_id": "dosing-001", "answer": "x"}, "model", "missing; expected a string that is not empty"),
    ({"probe_id": "dosing-001", "answer": 3, "model": "m"}, "answer", "missing; expected a string"),
    ({"probe_id": "nope-1", "answer": "x", "model": "m"}, "probe_id", "unknown probe id 'nope-1'"),
    ({"probe_id": "dosing-001", "answer": "x", "model": "m", "extra": 1}, "extra", "unknown field"),
    ({"probe_id": "dosing-001", "answer": "again", "model": "careful"}, "probe_id",
     "a second answer of model 'careful' to 'dosing-001' (first at line 1)"),
])
def test_a_bad_line_names_file_line_and_field(tmp_path, capsys, line, field, message):
    path = _answers(tmp_path / "bad.jsonl", [{"probe_id": "dosing-001", "answer": "ok", "model": "careful"}, line])
    assert run_cli(["eval", "score", str(path), "--json"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    where = f"{path}:2:" + (f" field '{field}':" if field else "")
    assert f"error: {where} {message}" in err


def test_eval_is_a_group_that_still_takes_a_run_dir(tmp_path, capsys):
    assert run_cli(["eval", "--help"]) == 0
    out = capsys.readouterr().out
    assert "run" in out and "score" in out
    for argv in (["eval", str(tmp_path / "nope")], ["eval", "run", str(tmp_path / "nope")],
                 ["eval", "--safety", str(tmp_path / "nope")]):
        assert run_cli(argv) == 2, argv
        assert "does not exist" in capsys.readouterr().err


def test_judge_grades_the_file_beside_the_rules(answers_file, capsys):
    from conftest import free_port
    from evaluation.judge_server import FakeJudgeServer, verdict

    with FakeJudgeServer(lambda prompt, answer: verdict(True, reason="fine")) as server:  # passes everything
        assert run_cli(["eval", "score", str(answers_file), "--json", "--judge", server.base_url]) == 0
    judge = json.loads(capsys.readouterr().out)["judge"]
    assert (judge["agreement"]["both_pass"], judge["agreement"]["rules_fail_judge_pass"]) == (4, 1)
    assert [(d["probe_id"], d["model"]) for d in judge["disagreements"]] == [("dosing-001", "reckless")]
    url = f"http://127.0.0.1:{free_port()}/v1"
    assert run_cli(["eval", "score", str(answers_file), "--judge", url]) == 3
    assert f"cannot connect to {url}/models" in " ".join(capsys.readouterr().err.split())
