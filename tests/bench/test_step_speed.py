"""bench/lib/step_speed.py: the warm-up steps are dropped by step number, and a run with nothing after warm-up is an
error naming its metrics file (multi_gpu's reader dropped the first records of any kind and then failed inside
statistics.median)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from lib import step_speed  # noqa: E402


def _write(run_dir: Path, records: list[dict]) -> None:
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_warm_up_is_counted_in_steps_not_records(tmp_path):
    # logging every 2 steps with a validation-only record at step 3, as `training.logging_steps=2` writes it
    _write(tmp_path / "run", [{"step": 2, "train_loss": 3.0, "tokens_per_second": 100.0},
                              {"step": 3, "val_loss": 2.9},
                              {"step": 4, "train_loss": 2.5, "tokens_per_second": 300.0},
                              {"step": 6, "train_loss": 2.0, "tokens_per_second": 500.0, "val_loss": 2.1},
                              {"step": 8, "train_loss": 1.5, "tokens_per_second": 700.0}])
    assert step_speed.measured_speeds(tmp_path / "run", warmup=3) == [300.0, 500.0, 700.0]
    assert step_speed.run_speed(tmp_path / "run", warmup=4) == {
        "tokens_per_second": 600.0, "measured_steps": 2, "train_losses": [3.0, 2.5, 2.0, 1.5]}


def test_a_run_with_no_step_after_warm_up_is_an_error_naming_its_file(tmp_path):
    _write(tmp_path / "run", [{"step": 1, "train_loss": 3.0, "tokens_per_second": 100.0},
                              {"step": 2, "train_loss": 2.0, "tokens_per_second": 200.0}])
    with pytest.raises(ValueError) as raised:
        step_speed.run_speed(tmp_path / "run", warmup=2)
    assert str(raised.value) == f"{tmp_path / 'run' / 'metrics.jsonl'}: no step after the 2 warm-up steps logged tokens/s"
