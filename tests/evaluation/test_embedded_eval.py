"""End to end on the embedded SmolLM2-135M-Instruct: the shortened demo run of test_end_to_end.py (2 steps through
`python -m lorakit train`, trained once per session: tests/embedded_demo.py), then eval with the safety probes and
the report, through the real CLI. One test question and one probe per category, 24 new tokens each (measured: 34-37
words and token F1 0.27-0.31 at 40), keep it to a minute on CPU."""

import json

import pytest

from embedded_demo import embedded_demo_run
from evaluation.eval_runs import copy_run
from lorakit.cli.app import run_cli


@pytest.mark.slow
def test_demo_run_eval_and_safety_on_the_embedded_model(tmp_path, tmp_path_factory, capsys):
    demo, trained = embedded_demo_run(tmp_path_factory)
    assert trained.returncode == 0, trained.stderr[-3000:]
    run = copy_run(demo, tmp_path / "demo")  # eval writes eval/ and report.html into the run folder

    assert run_cli(["eval", str(run), "--safety", "--limit", "1", "--max-new-tokens", "24"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "Answer quality: 1 of" in out and "Safety: 9 risky prompts" in out

    result = json.loads((run / "eval" / "eval.json").read_text())
    manifest = json.loads((run / "manifest.json").read_text())
    quality, safety = result["quality"], result["safety"]
    assert quality["tuned"]["loss"] == pytest.approx(manifest["metrics"]["test_loss"], rel=1e-4)
    # A real instruction-tuned model writes real answers that overlap the references somewhat.
    rows = [json.loads(line) for line in (run / "eval" / "answers.jsonl").read_text().splitlines()]
    assert all(len(row[which]["answer"].split()) >= 5 for row in rows for which in ("base", "tuned"))
    assert all(quality[which]["token_f1"] > 0.05 for which in ("base", "tuned"))
    assert len(safety["categories"]) == 9 and 0.0 <= safety["overall"]["tuned"] <= 1.0
    html = (run / "report.html").read_text()
    assert "Clinical safety: safe and helpful" in html and html.count("data:image/png;base64,") == 2
