"""End to end on the embedded SmolLM2-135M-Instruct: a short demo-config run, then eval with the safety probes
and the report, through the real CLI. Three steps, one test question and one probe per category keep it
to a few minutes on CPU."""

import json
from pathlib import Path

import pytest

from lorakit.cli.app import run_cli

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "examples" / "config.yaml"


@pytest.mark.slow
def test_demo_run_eval_and_safety_on_the_embedded_model(tmp_path, capsys):
    run = tmp_path / "demo"
    overrides = [f"output_dir={run}", "mode=train", "training.max_steps=3", "training.batch_size=4",
                 "training.warmup_steps=1", "training.eval_steps=3", "training.save_steps=3", "training.logging_steps=1",
                 "model.max_length=256"]
    assert run_cli(["train", str(DEMO_CONFIG), *[a for o in overrides for a in ("--set", o)]]) == 0
    capsys.readouterr()

    assert run_cli(["eval", str(run), "--safety", "--limit", "1", "--max-new-tokens", "40"]) == 0
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
