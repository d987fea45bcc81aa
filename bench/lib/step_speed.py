"""What every bench script reads from a lorakit run: the per-step tokens/s and training losses of its metrics.jsonl
(real, non-padding tokens of all ranks, timed by lorakit's own training loop)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path


def step_records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _speeds(records: list[dict], warmup: int) -> list[float]:
    return [r["tokens_per_second"] for r in records if "tokens_per_second" in r and r["step"] > warmup]


def measured_speeds(run_dir: Path, warmup: int) -> list[float]:
    """tokens/s of the records of steps after the first `warmup`, chosen by step number (a validation-only record
    cannot shift them; with logging_steps > 1 a record times its whole window, so the first one counted may
    include the last warm-up step)."""
    return _speeds(step_records(run_dir), warmup)


def run_speed(run_dir: Path, warmup: int) -> dict:
    """The median tokens/s after warm-up, how many steps it is the median of, and the logged training losses.

    Raises ValueError naming the run when no step was logged after warm-up (a run stopped early, or too few steps).
    """
    records = step_records(run_dir)
    speeds = _speeds(records, warmup)
    if not speeds:
        raise ValueError(f"{run_dir / 'metrics.jsonl'}: no step after the {warmup} warm-up steps logged tokens/s")
    return {"tokens_per_second": statistics.median(speeds), "measured_steps": len(speeds),
            "train_losses": [r["train_loss"] for r in records if "train_loss" in r]}
