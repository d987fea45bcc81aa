"""pipeline.train_evaluate: which steps `mode` and `eval.after_training` run, in which order, with what; the
stages themselves are stubbed (they have their own tests; tests/cli/test_eval_cli.py runs the real sequence)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest

from lorakit.config import RunConfig
from lorakit.run.source import Permissions
from lorakit.pipeline.train_evaluate import train_evaluate


class RecordingView:
    def __init__(self):
        self.events: list[tuple] = []

    def answering_without_training(self, output_dir):
        self.events.append(("answering_without_training", output_dir))

    def training_reporter(self):
        self.events.append(("training_reporter",))
        return "reporter"

    @contextmanager
    def training(self):
        self.events.append(("training starts",))
        try:
            yield
        finally:
            self.events.append(("training ends",))

    def trained(self, result):
        self.events.append(("trained", result.steps))

    @contextmanager
    def evaluation_progress(self):
        self.events.append(("evaluation starts",))
        yield "on_answer"
        self.events.append(("evaluation ends",))

    def evaluated(self, run_dir, request, result):
        self.events.append(("evaluated", run_dir, request.quality, request.safety, request.permissions, result))

    def report_written(self, path):
        self.events.append(("report_written", path))

    def demo_answer(self, question, session, disclaimer):
        self.events.append(("demo_answer", question, session.run.path, disclaimer))


@pytest.fixture
def stages(monkeypatch, tmp_path):
    """Stub stages that record their calls in `calls`."""
    calls: list[tuple] = []
    run_dir = tmp_path / "run"

    def train(config, *, resume, overwrite, reporter):
        calls.append(("train", resume, overwrite, reporter))
        return SimpleNamespace(run_dir=run_dir, adapter_dir=run_dir / "final", steps=4)

    def evaluate_run(path, request, on_answer):
        calls.append(("evaluate_run", path, on_answer))
        return {"quality": "numbers"}

    def load_run(path, *, permissions):
        calls.append(("load_run", path, permissions))
        config = RunConfig.model_validate({"data": {"train_file": "x.jsonl"},
                                           "inference": {"disclaimer": "Educational only."}})
        return SimpleNamespace(path=path, config=config)

    monkeypatch.setattr("lorakit.training.loop.train", train)
    monkeypatch.setattr("lorakit.evaluation.run_eval.evaluate_run", evaluate_run)
    monkeypatch.setattr("lorakit.evaluation.report.write_report", lambda path: path / "report.html")
    monkeypatch.setattr("lorakit.inference.generate.load_run", load_run)
    monkeypatch.setattr("lorakit.pipeline.train_evaluate.ChatSession", lambda run, settings: SimpleNamespace(run=run))
    return SimpleNamespace(calls=calls, run_dir=run_dir)


def _config(tmp_path: Path, mode: str, after_training: bool, **model) -> RunConfig:
    return RunConfig.model_validate({
        "output_dir": str(tmp_path / "run"), "mode": mode, "model": model, "data": {"train_file": "x.jsonl"},
        "inference": {"demo_question": "What is sepsis?"}, "eval": {"after_training": after_training, "safety": False}})


def test_train_alone_trains_and_nothing_else(tmp_path, stages):
    view = RecordingView()
    result = train_evaluate(_config(tmp_path, "train", False), view, resume=True)
    assert stages.calls == [("train", True, False, "reporter")]
    assert view.events == [("training_reporter",), ("training starts",), ("training ends",), ("trained", 4)]
    assert result.trained.steps == 4 and result.evaluation is None


def test_both_with_eval_after_training_trains_evaluates_reports_then_answers(tmp_path, stages):
    view = RecordingView()
    config = _config(tmp_path, "both", True, trust_remote_code=True)
    result = train_evaluate(config, view, overwrite=True)
    allowed = Permissions(trust_remote_code=True, allow_pickle=False)  # the given config's, not the run's
    run_dir = stages.run_dir
    assert stages.calls == [("train", False, True, "reporter"), ("evaluate_run", run_dir, "on_answer"),
                            ("load_run", run_dir, allowed)]
    assert view.events == [
        ("training_reporter",), ("training starts",), ("training ends",), ("trained", 4),
        ("evaluation starts",), ("evaluation ends",),
        ("evaluated", run_dir, True, False, allowed, {"quality": "numbers"}),
        ("report_written", run_dir / "report.html"),
        ("demo_answer", "What is sepsis?", run_dir, "Educational only."),
    ]
    assert result.evaluation == {"quality": "numbers"}


def test_inference_trains_nothing_and_answers_with_the_run_in_output_dir(tmp_path, stages):
    view = RecordingView()
    result = train_evaluate(_config(tmp_path, "inference", True), view)
    output_dir = tmp_path / "run"
    assert stages.calls == [("load_run", output_dir, Permissions())]
    assert view.events == [("answering_without_training", output_dir),
                           ("demo_answer", "What is sepsis?", output_dir, "Educational only.")]
    assert result.trained is None and result.evaluation is None


def test_an_interrupted_evaluation_is_not_reported_as_an_interrupted_training(tmp_path, stages, monkeypatch):
    """The CLI's training() prints the `--resume` hint for a Ctrl-C; one during eval must not pass through it."""
    def interrupted(path, request, on_answer):
        raise KeyboardInterrupt

    monkeypatch.setattr("lorakit.evaluation.run_eval.evaluate_run", interrupted)
    view = RecordingView()
    with pytest.raises(KeyboardInterrupt):
        train_evaluate(_config(tmp_path, "train", True), view)
    assert view.events[:4] == [("training_reporter",), ("training starts",), ("training ends",), ("trained", 4)]
    assert view.events[4:] == [("evaluation starts",)]
