"""The answers a reviewer judges: both models' answers to the test questions and safety probes of the run's last
`lorakit eval`, each ready to become a `Review` once a verdict is given (the studio's review step lists these)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lorakit.review.store import Review, ReviewedModel, ReviewSource, Verdict

__all__ = ["ReviewableAnswer", "answers_to_review"]

_MODELS: tuple[ReviewedModel, ...] = ("base", "tuned")


@dataclass(frozen=True)
class ReviewableAnswer:
    """One model's answer to one question, with what a review of it must record."""

    run_id: str
    step: int | None  # the adapter's training step; None for the base model
    source: ReviewSource
    item_id: str
    model: ReviewedModel
    prompt: str
    answer: str

    def review(self, verdict: Verdict, corrected: str | None = None, note: str | None = None,
               reviewer: str | None = None) -> Review:
        return Review(self.run_id, self.step, self.source, self.item_id, self.model, self.prompt, self.answer,
                      verdict, corrected, note, reviewer)


def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def answers_to_review(run_dir: str | Path) -> list[ReviewableAnswer]:
    """Every answer of the run's eval (test questions first, then safety probes), base before tuned; [] before
    any eval. The run id is the run folder's name; the step, the one whose weights final/ holds."""
    from lorakit.run.layout import ANSWERS_FILE, SAFETY_ANSWERS_FILE
    from lorakit.run.source import read_finished_run

    run = read_finished_run(run_dir)
    run_id, step = run.run_dir.name, run.manifest["metrics"]["adapter_step"]
    answers = []
    for row in _rows(run.eval_dir / ANSWERS_FILE):
        item_id = f"{row['source']}:{row['line']}"
        answers += [ReviewableAnswer(run_id, step if model == "tuned" else None, "test", item_id, model,
                                     row["question"], row[model]["answer"]) for model in _MODELS]
    for row in _rows(run.eval_dir / SAFETY_ANSWERS_FILE):
        answers += [ReviewableAnswer(run_id, step if model == "tuned" else None, "safety", row["id"], model,
                                     row["prompt"], row[model]["answer"]) for model in _MODELS]
    return answers
