"""A tiny trained run shared by the evaluation and CLI tests (trained once per test session, copied per test).

A plain module, not a conftest.py: a second conftest.py would shadow tests/conftest.py for `from conftest import`.
Import it as `evaluation.eval_runs` everywhere, so that every test module shares one cache.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest import tiny_run_config, write_qa_jsonl

_TRAINED: dict[Path, Path] = {}


def trained_tiny_run(model_dir: Path, workspace: Path) -> Path:
    """Train 4 CPU steps on the tiny model once; later calls return the same run directory."""
    if model_dir not in _TRAINED:
        from lorakit.training.loop import train

        workspace.mkdir(parents=True, exist_ok=True)
        data = write_qa_jsonl(workspace / "qa.jsonl")
        train(tiny_run_config(model_dir, data, workspace / "run"))
        _TRAINED[model_dir] = workspace / "run"
    return _TRAINED[model_dir]


def copy_run(run_dir: Path, target: Path) -> Path:
    """A private copy of a finished run (without checkpoints), so that a test may write eval/ and reports."""
    shutil.copytree(run_dir, target, ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
    return target


_EVALUATED: dict[Path, Path] = {}
# One test question and one probe pair per category, a few new tokens each: 38 short generations in all.
TINY_REQUEST = dict(quality=True, safety=True, limit=1, max_new_tokens=3)


def evaluated_tiny_run(model_dir: Path, workspace: Path) -> Path:
    """The tiny run after `evaluate_run` with TINY_REQUEST (once per session); copy it before writing to it."""
    if model_dir not in _EVALUATED:
        from lorakit.evaluation.run_eval import EvalRequest, evaluate_run

        run = copy_run(trained_tiny_run(model_dir, workspace), workspace / "evaluated")
        evaluate_run(run, EvalRequest(**TINY_REQUEST))
        _EVALUATED[model_dir] = run
    return _EVALUATED[model_dir]
