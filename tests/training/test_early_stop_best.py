"""Issue 9, point 3: when early stopping fires, final/ ships the weights of the best validation loss, whose
checkpoint survives rotation; a run that reaches max_steps ships its last weights and still names the best step."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import metric_records, tiny_run_config
from lorakit.evaluation.report import write_report
from lorakit.run.checkpoints import TrainerState, best_checkpoint_step, checkpoint_dir
from lorakit.training.early_stop import EarlyStopping
from lorakit.training.loop import train

# On the tiny model a learning rate of 0.2 lowers the validation loss for a few steps, then overshoots:
# with an evaluation every step and patience 3 the run stops 3 steps past its best (best 4, last 7).
OVERSHOOT = dict(learning_rate=0.2, max_steps=16, eval_steps=1, early_stopping_patience=3)


def _val_losses(run_dir) -> dict[int, float]:
    records = metric_records(run_dir)
    return {r["step"]: r["val_loss"] for r in records if "val_loss" in r}


def _adapter(folder) -> dict[str, torch.Tensor]:
    return load_file(folder / "adapter_model.safetensors")


def _equal(first: dict, second: dict) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_early_stop_ships_the_best_checkpoint_which_survives_rotation(tiny_llama_dir, qa_file, tmp_path):
    run = tmp_path / "run"
    # A checkpoint every step and only one kept: rotation deletes all but the newest, and the best.
    result = train(tiny_run_config(tiny_llama_dir, qa_file, run, save_steps=1, save_total_limit=1, **OVERSHOOT))
    losses = _val_losses(run)
    best_step = min(losses, key=losses.get)
    assert result.stopped_early and result.steps == max(losses) == best_step + 3 < OVERSHOOT["max_steps"]
    assert best_step > 1  # it did improve for a while, so the first evaluation is not trivially the best

    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert kept == [checkpoint_dir(run, best_step).name, checkpoint_dir(run, result.steps).name]
    final = _adapter(run / "final")
    assert _equal(final, _adapter(checkpoint_dir(run, best_step)))
    assert not _equal(final, _adapter(checkpoint_dir(run, result.steps)))  # the last weights are not shipped

    for manifest_path in (run / "final" / "manifest.json", run / "manifest.json"):
        metrics = json.loads(manifest_path.read_text())["metrics"]
        assert (metrics["best_val_step"], metrics["last_step"], metrics["steps"]) == (best_step, result.steps,
                                                                                      result.steps)
        assert (metrics["adapter_step"], metrics["adapter_weights"]) == (best_step, "best")
        assert metrics["best_val_loss"] == pytest.approx(losses[best_step])
    html = " ".join(write_report(run).read_text().split())
    assert f"stopped early (no further improvement); the adapter holds the weights of step {best_step} (the best)" in html


def test_a_run_that_reaches_max_steps_ships_its_last_weights_and_names_the_best(tiny_llama_dir, qa_file, tmp_path):
    run = tmp_path / "run"
    # Patience too long to fire within 7 steps: the run ends normally, final/ holds step 7.
    train(tiny_run_config(tiny_llama_dir, qa_file, run, save_steps=100, save_total_limit=1,
                          **{**OVERSHOOT, "max_steps": 7, "early_stopping_patience": 10}))
    losses = _val_losses(run)
    best_step = min(losses, key=losses.get)
    assert best_step < 7
    metrics = json.loads((run / "final" / "manifest.json").read_text())["metrics"]
    assert not metrics["stopped_early"]
    assert (metrics["best_val_step"], metrics["last_step"], metrics["adapter_step"], metrics["adapter_weights"]) == (
        best_step, 7, 7, "last")
    assert _equal(_adapter(run / "final"), _adapter(checkpoint_dir(run, 7)))
    # The best checkpoint is kept all the same (saved when it was the best, never rotated away).
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [checkpoint_dir(run, best_step).name,
                                                                      checkpoint_dir(run, 7).name]


def test_rotation_keeps_a_best_only_while_early_stopping_is_on():
    stopper = EarlyStopping(patience=2)
    stopper.update(3, 1.0)
    assert best_checkpoint_step(TrainerState(early_stopping=stopper.state_dict())) == 3
    assert best_checkpoint_step(TrainerState(early_stopping=EarlyStopping(patience=None).state_dict())) is None
    assert best_checkpoint_step(TrainerState()) is None  # before the first step
    assert best_checkpoint_step(TrainerState(early_stopping=EarlyStopping(patience=2).state_dict())) is None
