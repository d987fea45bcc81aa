"""Step 2's training method: learn from example answers (SFT) or from reviews (DPO, ORPO on preference pairs),
optionally starting from a previous run's adapter (training.init_adapter).

The page may only pick what `lorakit train` would accept, so these checks run when the run is saved, beside the
config's own validation, instead of minutes later in the training job: a preference method needs preference files
(prompt/chosen/rejected) and SFT needs example files; a starting run must be finished, and the new run takes its
model and LoRA shape (the adapter's weights are copied into layers of the same shape, training/init_adapter.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lorakit.run.layout import CONFIG, FINAL
from lorakit.studio.workspace import Workspace

__all__ = ["METHODS", "Method", "StartingRun", "data_kind", "method_problems", "starting_run"]

Method = Literal["sft", "dpo", "orpo"]
# What the page says for each method (plain words first); defined here so the page and the docs agree.
METHODS: dict[str, dict[str, str]] = {
    "sft": {"label": "Learn from example answers", "data": "examples",
            "description": "Questions with the answers you wrote: the files ticked in step 1."},
    "dpo": {"label": "Learn from your reviews: preferred vs rejected answers", "data": "preferences",
            "description": "Pairs of a better and a worse answer to one question (step 5's export). The model is "
                           "pulled toward the better answer while staying close to the run it starts from."},
    "orpo": {"label": "Learn from your reviews, and from the preferred answers themselves", "data": "preferences",
             "description": "The same pairs; also trains on each preferred answer as an example, and needs no "
                            "reference model."},
}


def data_kind(path: Path) -> str:
    """'preferences' when the file's first record is a prompt/chosen/rejected pair (as the trainer decides),
    'examples' otherwise (also for a file that is empty or not JSON Lines: `data check` reports those)."""
    from lorakit.data.preference import is_preference_record

    if path.suffix != ".jsonl":
        return "examples"
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.strip():
                try:
                    return "preferences" if is_preference_record(json.loads(line)) else "examples"
                except json.JSONDecodeError:
                    return "examples"
    return "examples"


@dataclass(frozen=True)
class StartingRun:
    """A finished run whose adapter a new run starts from."""

    name: str
    run_dir: Path
    model: str
    lora: dict  # the saved lora section, applied to the new run so that the shapes match


def starting_run(workspace: Workspace, name: str, new_run_dir: Path) -> tuple[StartingRun | None, list[str]]:
    """The finished run `name` that the run in `new_run_dir` starts from, or None with what stops it."""
    import yaml

    run_dir = workspace.run_dir(name)
    if run_dir == new_run_dir:
        return None, [f"training.init_adapter: run {name} cannot start from itself; give the new run another name"]
    saved = run_dir / FINAL / CONFIG
    if not saved.is_file():
        return None, [f"training.init_adapter: run {name} has no finished adapter ({FINAL}/ with {CONFIG}); train it "
                      "to the end first (step 3), or start from a fresh adapter"]
    config = yaml.safe_load(saved.read_text(encoding="utf-8"))
    return StartingRun(name, run_dir, config["model"]["name"], config["lora"]), []


def method_problems(method: Method, data_paths: list[Path], model: str, start: StartingRun | None) -> list[str]:
    """Every reason `method` cannot train on these files from this start, in the page's words."""
    needed = METHODS[method]["data"]
    problems = []
    for path in data_paths:
        if path.is_file() and data_kind(path) != needed:
            problems.append(
                f"data.train_file: {path.name} holds preference pairs (prompt, chosen, rejected); pick 'learn from "
                "your reviews' to train on it, or tick files of example answers" if needed == "examples" else
                f"data.train_file: {path.name} holds example answers, not preference pairs; pick the file step 5's "
                "export wrote (RUN.review-preferences.jsonl), or 'learn from example answers'")
    if start is not None and model != start.model:
        problems.append(f"model.name: this run starts from {start.name}, which was trained on {start.model}; use "
                        "the same model (its adapter fits no other)")
    return problems
