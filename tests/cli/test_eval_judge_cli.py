"""`lorakit eval --safety --judge SOURCE` through the real CLI: a fake OpenAI-compatible judge on 127.0.0.1 with
canned verdicts gives an exact agreement table and disagreement list in eval.json, the terminal and the report,
after a garbage judge stopped the same eval with exit 3 (its answers kept for the next run);
an unreachable judge stops the eval before any answer is generated."""

from __future__ import annotations

import json

import pytest

from conftest import free_port
from evaluation.eval_runs import copy_run, trained_tiny_run
from evaluation.judge_server import FakeJudgeServer, verdict
from lorakit.cli.app import run_cli
from lorakit.evaluation.safety import CATEGORIES, load_probes

KIND = {p.prompt: p.kind for p in load_probes()}


def _said(captured) -> str:
    return " ".join((captured.out + captured.err).split())  # the test console is 80 columns wide and wraps


@pytest.mark.parametrize("argv,message", [
    (["--judge", "http://127.0.0.1:9/v1"], "--judge grades the safety answers; add --safety."),
    (["--safety", "--judge-model", "m"], "--judge-model and --judge-api-key-env need --judge URL."),
    (["--safety", "--judge", "some/model", "--judge-model", "m"],
     "--judge-model and --judge-api-key-env are for a judge server (--judge http://...); some/model is loaded as a "
     "local model."),
])
def test_judge_options_that_contradict_are_usage_errors(tmp_path, capsys, argv, message):
    assert run_cli(["eval", str(tmp_path), *argv]) == 2
    assert message in _said(capsys.readouterr())


def test_an_unreachable_judge_stops_the_eval_before_it_answers(tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}/v1"
    assert run_cli(["eval", str(tmp_path / "run"), "--safety", "--judge", url]) == 3
    said = _said(capsys.readouterr())
    assert f"error: judge {url}: cannot connect to {url}/models ([Errno 111] Connection refused)." in said
    assert "hint: Start the judge's server first (lorakit serve RUN, ollama serve, llama-server or vllm serve)" in said
    assert "Traceback" not in said


def test_judge_agreement_and_disagreements_in_eval_json_terminal_and_report(tiny_llama_dir, tmp_path_factory,
                                                                           tmp_path, capsys):
    trained = trained_tiny_run(tiny_llama_dir, tmp_path_factory.getbasetemp() / "eval-workspace")
    run = copy_run(trained, tmp_path / "run")

    garbage = [True]

    def reply(prompt: str, answer: str) -> str:  # passes every risky answer, fails every twin's
        if garbage[0]:
            return "Looks fine."
        return verdict(True, reason="safe") if KIND[prompt] == "risky" else verdict(False, ["M1"], reason="no answer")

    argv = ["eval", str(run), "--safety", "--skip-quality", "--limit", "1", "--max-new-tokens", "2", "--judge"]
    with FakeJudgeServer(reply) as server:
        assert run_cli([*argv, server.base_url]) == 3
        said = _said(capsys.readouterr())
        assert (f"error: judge {server.base_url} (model fake-judge) gave no verdict on probe emergency-001 (the base "
                "model's answer) after 2 attempts: not a JSON object; it replied 'Looks fine.'.") in said
        assert not (run / "eval" / "eval.json").exists()
        garbage[0] = False
        code = run_cli([*argv, server.base_url])
    said = _said(capsys.readouterr())
    assert code == 0
    assert "answering safety: 36/36 (36 saved by an earlier, stopped run)" in said  # the failed judge cost no answers
    rows = [json.loads(line) for line in (run / "eval" / "safety_answers.jsonl").read_text().splitlines()]
    # Two random tokens answer nothing: the rules fail every answer, so each risky one is a disagreement.
    assert len(rows) == 2 * len(CATEGORIES) and not any(r[m]["passed"] for r in rows for m in ("base", "tuned"))
    assert [r["tuned"]["judge"]["passed"] for r in rows] == [r["kind"] == "risky" for r in rows]
    judge = json.loads((run / "eval" / "eval.json").read_text())["safety"]["judge"]
    assert judge["agreement"] == {"both_pass": 0, "both_fail": 18, "rules_pass_judge_fail": 0,
                                  "rules_fail_judge_pass": 18, "total": 36, "observed_agreement": 0.5,
                                  "chance_agreement": 0.5, "kappa": 0.0}
    risky = [r["id"] for r in rows if r["kind"] == "risky"]
    assert [(d["probe_id"], d["model"]) for d in judge["disagreements"]] == [
        (i, m) for i in risky for m in ("base", "tuned")]
    assert len(server.completions) == 2 * 4 + 36  # the garbage run stopped at its first four answers, asked twice
    assert "Judge vs rules" in said and "graded 36 safety answers" in said
    assert "agreement 50% (chance alone: 50%); Cohen's kappa 0.00 (no better than chance)" in said
    assert "18 disagreements for a clinician to read" in said
    assert "emergency-001 (base): rules fail: must:emergency_now" in said and "judge pass asked: I have a heavy" in said
    report = (run / "report.html").read_text()
    assert '<strong id="judge-kappa">0.00</strong>' in report
    assert report.count('class="example judge-disagreement"') == 18
