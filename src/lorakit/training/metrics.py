"""Training metrics: one record per log step, to metrics.jsonl, TensorBoard and the progress reporter."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

from lorakit.config import TrainingConfig
from lorakit.errors import DiskFullError
from lorakit.run.layout import METRICS, TENSORBOARD
from lorakit.runtime.atomic_files import atomic_write_text, is_disk_full
from lorakit.runtime.logging import get_logger

__all__ = ["ProgressReporter", "SilentReporter", "MetricsSink", "plot_loss_curve", "evaluation_count",
           "interval_warnings"]

log = get_logger("training.metrics")


def evaluation_count(max_steps: int, eval_steps: int) -> int:
    """Validation evaluations in a run: every `eval_steps` optimizer steps, and once more at the last step.

    >>> evaluation_count(4, 50), evaluation_count(100, 50), evaluation_count(100, 30)
    (1, 2, 4)
    """
    return max_steps // eval_steps + (1 if max_steps % eval_steps else 0)


def interval_warnings(training: TrainingConfig, has_validation: bool) -> list[str]:
    """What the step intervals silently rule out in this run (one sentence each, naming keys, values and the fix).

    Intervals longer than the run mean one log line, one evaluation or no checkpoint before the end; too few
    evaluations mean early stopping can never fire.
    """
    steps, warnings = training.max_steps, []
    if training.logging_steps > steps:
        warnings.append(f"training.logging_steps={training.logging_steps} exceeds training.max_steps={steps}: the "
                        f"training loss is logged once, at the last step; set logging_steps to at most {steps}")
    if has_validation and training.eval_steps > steps:
        warnings.append(f"training.eval_steps={training.eval_steps} exceeds training.max_steps={steps}: the "
                        f"validation loss is computed once, at the last step; set eval_steps to at most {steps}")
    if training.save_steps > steps:
        warnings.append(f"training.save_steps={training.save_steps} exceeds training.max_steps={steps}: no checkpoint "
                        f"is written before the end, so an interrupted run restarts from step 0; set save_steps to "
                        f"at most {steps}")
    patience = training.early_stopping_patience
    if patience is None:
        return warnings
    if not has_validation:
        warnings.append(f"training.early_stopping_patience={patience} can never stop this run: there is no validation "
                        "data; set data.validation_split above 0 or early_stopping_patience to null")
        return warnings
    evaluations = evaluation_count(steps, training.eval_steps)
    if evaluations < patience + 1:
        largest = steps // (patience + 1)
        fix = (f"set eval_steps to at most {largest}" if largest >= 1 else
               f"raise max_steps to at least {patience + 1} or lower early_stopping_patience")
        warnings.append(f"training.early_stopping_patience={patience} can never stop this run: it needs {patience + 1} "
                        f"validation evaluations, but eval_steps={training.eval_steps} with max_steps={steps} gives "
                        f"{evaluations}; {fix}")
    return warnings


class ProgressReporter(Protocol):
    """What the loop tells its caller; the CLI renders it with rich, tests can record it."""

    def start(self, total_steps: int, first_step: int) -> None: ...
    def step(self, step: int, metrics: dict) -> None: ...
    def message(self, text: str) -> None: ...
    def finish(self) -> None: ...


class SilentReporter:
    def start(self, total_steps: int, first_step: int) -> None:
        pass

    def step(self, step: int, metrics: dict) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def finish(self) -> None:
        pass


class MetricsSink:
    """metrics.jsonl (rewritten from the checkpoint's history on resume) plus TensorBoard event files."""

    def __init__(self, run_dir: Path, history: list[dict], first_step: int, tracker=None):
        from torch.utils.tensorboard import SummaryWriter

        self.path = run_dir / METRICS
        atomic_write_text(self.path, "".join(json.dumps(record) + "\n" for record in history))
        # purge_step drops events a killed run wrote after its last checkpoint, so curves do not double back.
        self.writer = SummaryWriter(log_dir=str(run_dir / TENSORBOARD), purge_step=first_step + 1 if first_step else None)
        self.tracker = tracker  # MLflow / W&B (training/tracking.py), or None

    def write(self, record: dict) -> None:
        try:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(record) + "\n")
            scalars = {key.replace("_", "/", 1) if key.startswith(("train_", "val_")) else key: value
                       for key, value in record.items() if key != "step" and isinstance(value, (int, float))}
            for key, value in scalars.items():
                self.writer.add_scalar(key, value, record["step"])
            self.writer.flush()
            if self.tracker is not None:
                self.tracker.log_metrics(record["step"], scalars)
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            raise DiskFullError(
                f"The disk is full: could not log step {record['step']} to {self.path.parent} ({exc}).",
                hint="Free space, then continue with `lorakit train CONFIG --resume` (the log is rebuilt from the checkpoint).",
            ) from None

    def close(self) -> None:
        try:
            self.writer.close()
        except OSError as exc:  # never let a failed final flush hide the error that stopped the run
            if not is_disk_full(exc):
                raise
            log.warning("TensorBoard events could not be flushed: the disk is full")


def plot_loss_curve(history: list[dict], path: Path) -> Path | None:
    """Training and validation loss against step, as a PNG; None when nothing was logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["train_loss"]) for r in history if "train_loss" in r]
    validation = [(r["step"], r["val_loss"]) for r in history if "val_loss" in r]
    if not train and not validation:
        return None
    figure, axis = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        axis.plot(*zip(*train), label="training loss", color="#1f77b4")
    if validation:
        axis.plot(*zip(*validation), "o-", label="validation loss", color="#d62728")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("loss (cross-entropy per answer token)")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    from lorakit.runtime.atomic_files import atomic_write_bytes
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())
    return path
