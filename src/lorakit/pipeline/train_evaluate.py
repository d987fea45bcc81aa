"""`lorakit train`'s whole sequence as one library call: train (unless `mode: inference`), evaluate when
`eval.after_training` says so, then answer `inference.demo_question` (with `mode: both`, or alone with
`mode: inference`).

The CLI's train command calls it, and the studio's train job runs that command. This module decides what runs and
in which order and prints nothing: a `PipelineView` is told each step's result and shows it (the CLI prints it
with rich; a test can record it).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from lorakit.config import RunConfig
from lorakit.evaluation.run_eval import EvalRequest
from lorakit.inference.chat import ChatSession
from lorakit.run.source import Permissions
from lorakit.training.finalize import TrainResult
from lorakit.training.metrics import ProgressReporter

__all__ = ["PipelineResult", "PipelineView", "train_evaluate", "evaluate_run_and_report", "answer_demo_question"]

AnswerProgress = Callable[[str, int, int], None]  # (stage, answers done, answers in the stage)


class PipelineView(Protocol):
    """How a surface shows the sequence; every method is called at most once per run, in the order listed."""

    def answering_without_training(self, output_dir: Path) -> None:
        """`mode: inference`: nothing is trained; the finished run in output_dir answers the demo question."""

    def training_reporter(self) -> ProgressReporter:
        """Training progress, created just before training starts."""

    def training(self) -> AbstractContextManager[None]:
        """Wraps the training step alone: what the surface does when training fails or is interrupted (an error
        or a Ctrl-C in evaluation or in the answer is not training's, and passes through untouched)."""

    def trained(self, result: TrainResult) -> None: ...

    def evaluation_progress(self) -> AbstractContextManager[AnswerProgress]:
        """Wraps the evaluation: yields the callback told of every answer generated."""

    def evaluated(self, run_dir: Path, request: EvalRequest, result: dict) -> None: ...

    def report_written(self, path: Path) -> None: ...

    def demo_answer(self, question: str, session: ChatSession, disclaimer: str) -> None:
        """Ask `session` the question and show the answer (streamed, if the surface can)."""


@dataclass(frozen=True)
class PipelineResult:
    trained: TrainResult | None  # None with mode: inference
    evaluation: dict | None  # evaluate_run's result; None without eval.after_training


def train_evaluate(config: RunConfig, view: PipelineView, *, resume: bool = False,
                   overwrite: bool = False) -> PipelineResult:
    """Run what `config.mode` and `config.eval.after_training` ask for, in order, telling `view` each result."""
    # The config given here (not the run's saved copy) says what the base model may do.
    allowed = Permissions(config.model.trust_remote_code, config.model.allow_pickle)
    if config.mode == "inference":  # the guide's mode: answer from the finished run in output_dir, train nothing
        view.answering_without_training(Path(config.output_dir))
        answer_demo_question(Path(config.output_dir), config.inference.demo_question, allowed, view)
        return PipelineResult(trained=None, evaluation=None)
    from lorakit.training.loop import train

    reporter = view.training_reporter()
    with view.training():
        trained = train(config, resume=resume, overwrite=overwrite, reporter=reporter)
    view.trained(trained)
    evaluation = None
    if config.eval.after_training:
        request = EvalRequest(quality=True, safety=config.eval.safety, permissions=allowed)
        evaluation = evaluate_run_and_report(trained.run_dir, request, view)
    if config.mode == "both":
        answer_demo_question(trained.run_dir, config.inference.demo_question, allowed, view)
    return PipelineResult(trained=trained, evaluation=evaluation)


def evaluate_run_and_report(run_dir: Path, request: EvalRequest, view: PipelineView) -> dict:
    """Evaluate a finished run, show the result, then write RUN_DIR/report.html (which includes it)."""
    from lorakit.evaluation.report import write_report
    from lorakit.evaluation.run_eval import evaluate_run

    with view.evaluation_progress() as on_answer:
        result = evaluate_run(run_dir, request, on_answer)
    view.evaluated(run_dir, request, result)
    view.report_written(write_report(run_dir))
    return result


def answer_demo_question(run_dir: Path, question: str, allowed: Permissions, view: PipelineView) -> None:
    """Load the run (its base model allowed what `allowed` says) and let `view` show its answer to `question`."""
    from lorakit.inference.generate import GenerationSettings, load_run

    run = load_run(run_dir, permissions=allowed)
    session = ChatSession(run, GenerationSettings.from_config(run.config))
    view.demo_answer(question, session, run.config.inference.disclaimer)
