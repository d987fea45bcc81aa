"""The HTML report: produced from a run's files, self-contained, escaped, and useful before evaluation too."""

import base64
import json
import re

import pytest

from evaluation.eval_runs import copy_run, evaluated_tiny_run, trained_tiny_run
from lorakit.errors import CheckpointError
from lorakit.evaluation.report import write_report

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def evaluated(tiny_llama_dir, tmp_path_factory, tmp_path):
    source = evaluated_tiny_run(tiny_llama_dir, tmp_path_factory.getbasetemp() / "eval-workspace")
    return copy_run(source, tmp_path / "run")


def _images(html):
    return re.findall(r'<img src="([^"]+)"', html)


def test_report_is_self_contained_with_every_section(evaluated):
    html = write_report(evaluated).read_text()
    assert (evaluated / "report.html").is_file()
    for section in ("At a glance", "Clinical safety: safe and helpful", "Answer quality on held-out questions", "Training",
                    "Data", "Configuration and provenance", "Sample answers", "One probe per category"):
        assert section in html, section
    images = _images(html)
    assert len(images) == 2  # safety chart and loss curve
    for uri in images:
        assert uri.startswith("data:image/png;base64,")
        assert base64.b64decode(uri.split(",", 1)[1])[:8] == PNG
    assert not re.search(r'(src|href)="(https?:)?//', html), "the report must load nothing from the network"
    assert "<script" not in html
    answers = [json.loads(line) for line in (evaluated / "eval" / "answers.jsonl").read_text().splitlines()]
    assert answers[0]["question"] in html
    assert "Emergencies" in html and "Prompt injection" in html
    config = (evaluated / "config.yaml").read_text()
    assert "learning_rate" in config and "learning_rate" in html


def test_model_output_is_escaped_not_run(evaluated):
    path = evaluated / "eval" / "answers.jsonl"
    row = json.loads(path.read_text().splitlines()[0])
    row["tuned"]["answer"] = '<script>alert("x")</script><img src="https://example.org/x.png">'
    path.write_text(json.dumps(row) + "\n")
    html = write_report(evaluated).read_text()
    assert "<script>alert" not in html and "&lt;script&gt;alert" in html
    assert "https://example.org" not in re.findall(r'<img src="([^"]+)"', html)


def test_report_before_evaluation_says_how_to_fill_it(tiny_llama_dir, tmp_path_factory, tmp_path):
    run = copy_run(trained_tiny_run(tiny_llama_dir, tmp_path_factory.getbasetemp() / "eval-workspace"), tmp_path / "run")
    html = write_report(run, tmp_path / "out" / "page.html").read_text()
    assert "The safety probes have not been run" in html and "lorakit eval" in html
    assert len(_images(html)) == 1  # the loss curve needs only metrics.jsonl


def test_report_of_a_folder_that_is_no_run(tmp_path):
    with pytest.raises(CheckpointError, match="holds no trained adapter"):
        write_report(tmp_path)


def test_evaluation_of_an_earlier_adapter_is_not_shown(evaluated):
    manifest = evaluated / "final" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"seed"', '"retrained": true, "seed"', 1))
    html = write_report(evaluated).read_text()
    assert "Evaluation results are out of date" in html
    assert "The safety probes have not been run" in html and "Sample answers" not in html


@pytest.mark.parametrize("name, remade_by", [
    ("metrics.jsonl", "Training the run again (`lorakit train CONFIG --overwrite`)"),
    ("eval/answers.jsonl", "`lorakit eval` on the run"),
])
def test_a_damaged_jsonl_file_names_itself_and_what_rewrites_it(evaluated, name, remade_by):
    damaged = evaluated / name
    damaged.write_text('{"step": 1}\n{"step": 2\n')
    with pytest.raises(CheckpointError) as raised:
        write_report(evaluated)
    assert str(raised.value) == (f"{damaged} is damaged (Expecting ',' delimiter: line 1 column 11 (char 10)).\n"
                                 f"{remade_by} rewrites this file; or copy the run again.")
