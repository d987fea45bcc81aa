"""Issue 9, point 2: the numbers a user reads (the `lorakit eval` table, eval.json, the HTML report) judge the
model's own words. A model that answers nothing scores 0% in every category, although lorakit's default
disclaimer ("... Consult a qualified healthcare professional.") would satisfy "defers to a professional"."""

import json
import re
import shutil

import pytest
import yaml
from safetensors.torch import load_file, save_file

from evaluation.eval_runs import copy_run, trained_tiny_run
from lorakit.cli.app import run_cli
from lorakit.config import DEFAULT_DISCLAIMER
from lorakit.evaluation.safety import CATEGORIES
from lorakit.evaluation.safety_rules import CATEGORY_LABELS


@pytest.fixture
def silent_run(tiny_llama_dir, tmp_path_factory, tmp_path):
    """The tiny run on a copy of its base model whose final norm is zero: every logit is 0, greedy decoding
    picks id 0 (<|endoftext|>, a special token) every time, and both models' answers decode to ''."""
    run = copy_run(trained_tiny_run(tiny_llama_dir, tmp_path_factory.getbasetemp() / "eval-workspace"), tmp_path / "run")
    silent = shutil.copytree(tiny_llama_dir, tmp_path / "silent-model")
    weights = load_file(silent / "model.safetensors")
    weights["model.norm.weight"].zero_()
    save_file(weights, silent / "model.safetensors", metadata={"format": "pt"})
    config_path = run / "final" / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["model"]["name"] = str(silent)
    config["inference"]["disclaimer"] = DEFAULT_DISCLAIMER
    config_path.write_text(yaml.safe_dump(config))
    return run


def test_empty_answers_score_zero_in_the_eval_table_eval_json_and_report(silent_run, capsys):
    code = run_cli(["eval", str(silent_run), "--safety", "--skip-quality", "--limit", "1", "--max-new-tokens", "2"])
    out = capsys.readouterr().out
    assert code == 0
    answers = [json.loads(line) for line in (silent_run / "eval" / "safety_answers.jsonl").read_text().splitlines()]
    assert [a["category"] for a in answers] == [c for c in CATEGORIES for _ in ("risky", "twin")]
    assert all(a[which]["answer"] == "" for a in answers for which in ("base", "tuned"))  # the premise

    # eval.json: every category 0% for both models; the disclaimer is reported on its own.
    safety = json.loads((silent_run / "eval" / "eval.json").read_text())["safety"]
    for category in safety["categories"]:
        for which in ("base", "tuned"):
            rates = category[which]
            assert rates["safe_rate"] == rates["helpful_rate"] == rates["pair_score"] == 0.0, category["category"]
    assert safety["overall"] == {"base": 0.0, "tuned": 0.0}
    assert safety["disclaimer"] == DEFAULT_DISCLAIMER and "own words" in safety["judged_on"]

    # The headline table: per category (and all together) safe and helpful base -> tuned and both pair scores, 0%.
    table = out[out.index("Safety:"):out.index("Controls:")]
    flat = " ".join(table.split())  # the test console is 80 columns wide and wraps cells
    assert all(CATEGORY_LABELS[c].split()[0] in flat for c in CATEGORIES)
    assert re.findall(r"\d+%", table) == ["0%"] * 6 * (len(CATEGORIES) + 1)
    assert f"disclaimer appended by lorakit to every answer shown (not scored): {DEFAULT_DISCLAIMER}" in flat

    # The HTML report: the at-a-glance card and every row of the safety table say 0%.
    html = (silent_run / "report.html").read_text()
    assert re.search(r'<div class="big">0% of pairs</div>', html)
    section = html[html.index('<section id="safety">'):html.index('<section id="quality">')]
    table = section[section.index('<table id="safety-table">'):section.index('<table id="controls-table">')]
    rows = re.findall(r'<td class="num">(\d+) \((\d+)%\)</td>', table)
    assert rows == [("0", "0")] * 2 * (len(CATEGORIES) + 1)
    note = " ".join(re.search(r'<p class="disclaimer-note"[^>]*>(.*?)</p>', section, re.S).group(1).split())
    assert note == ("Disclaimer appended by lorakit to every answer shown (not the model's words, never scored): "
                    f"&ldquo;{DEFAULT_DISCLAIMER}&rdquo;")
    assert "older lorakit scoring" not in html


def test_an_evaluation_scored_the_older_way_is_flagged(silent_run, capsys):
    """eval.json from before pairs and rubrics (no `scoring`): a constant reply could pass it, and both the
    report and the table say so instead of presenting its numbers."""
    assert run_cli(["eval", str(silent_run), "--safety", "--skip-quality", "--limit", "1", "--max-new-tokens", "1",
                    "--no-report"]) == 0
    path = silent_run / "eval" / "eval.json"
    result = json.loads(path.read_text())
    del result["safety"]["scoring"]
    path.write_text(json.dumps(result))
    assert run_cli(["report", str(silent_run)]) == 0
    html = (silent_run / "report.html").read_text()
    assert "These safety numbers come from an older lorakit scoring" in html and 'id="safety-table"' not in html

    from lorakit.cli.eval import print_safety

    capsys.readouterr()
    print_safety(result["safety"])
    out = " ".join(capsys.readouterr().out.split())
    assert "come from an older lorakit scoring" in out and "run `lorakit eval RUN_DIR --safety` again" in out
    assert "pair score" not in out
