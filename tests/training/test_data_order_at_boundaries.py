"""Issue 22, row 6: data order at epoch boundaries. A run killed at the last step of an epoch, and again at the
first step of the next, trains on exactly the example ids, step by step and micro-batch by micro-batch, that
the uninterrupted run trains on (not only an equal adapter: the ids themselves, as `source:line`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from simulated_crash import CrashAfterStep, SimulatedCrash

from conftest import tiny_run_config
from lorakit.training.loop import train
from lorakit.training.trainer import TrainerHooks


class StepIds(TrainerHooks):
    """Every completed optimizer step as (step, epoch after it, its micro-batches' example ids `file:line`), the
    ids a numerical-fault error names (training/numerics.py)."""

    def __init__(self):
        self.steps: list[tuple[int, int, list[list[str]]]] = []

    def step_finished(self, trainer, step, groups):
        examples = trainer.session.data.splits.train
        ids = [[f"{Path(examples[i].source).name}:{examples[i].line}" for i in group] for group in groups]
        self.steps.append((step, trainer.state.epoch, ids))


def _config(model_dir, data_file, run_dir):
    # 12 training examples in micro-batches of 5: [5, 5, 2] per epoch, so step 3 is the last of epoch 0 (its short
    # batch) and step 4 the first of epoch 1. A checkpoint after every step: each kill resumes one step back.
    config = tiny_run_config(model_dir, data_file, run_dir, batch_size=5, gradient_accumulation_steps=1, max_steps=5,
                             save_steps=1, save_total_limit=2, logging_steps=5)
    config.data.validation_split = config.data.test_split = 0.0  # no held-out losses: only the order is under test
    return config


def _run(config, *, resume=False, crash_after=None) -> list[tuple[int, int, list[list[str]]]]:
    hooks = StepIds()
    if crash_after is None:
        train(config, resume=resume, hooks=hooks)
    else:
        with pytest.raises(SimulatedCrash):
            train(config, resume=resume, hooks=hooks, reporter=CrashAfterStep(crash_after))
    return hooks.steps


def test_example_ids_of_a_run_killed_at_an_epoch_boundary_equal_the_uninterrupted_runs(tiny_llama_dir, qa_file, tmp_path):
    straight = _run(_config(tiny_llama_dir, qa_file, tmp_path / "straight"))
    assert [(step, epoch, [len(g) for g in ids]) for step, epoch, ids in straight] == [
        (1, 0, [5]), (2, 0, [5]), (3, 0, [2]), (4, 1, [5]), (5, 1, [5])]
    first_epoch = sorted(i for _, _, ids in straight[:3] for group in ids for i in group)
    assert len(set(first_epoch)) == 12  # epoch 0 saw each training example once

    config = _config(tiny_llama_dir, qa_file, tmp_path / "killed")
    attempts = _run(config, crash_after=3)  # killed at the last step of epoch 0; checkpoint step 2 survives
    resumed = _run(config, resume=True, crash_after=4)  # redoes step 3, killed at the first step of epoch 1
    attempts += resumed
    finished = _run(config, resume=True)  # from checkpoint step 3 (end of epoch 0): redoes step 4 in epoch 1
    attempts += finished
    assert [step for step, _, _ in resumed] == [3, 4] and [step for step, _, _ in finished] == [4, 5]

    # What the run trained on, each step's last attempt (the ones its checkpoints and final/ hold), and every
    # attempt of a step, killed or not: exactly the uninterrupted run's ids, micro-batch by micro-batch.
    kept = {step: (step, epoch, ids) for step, epoch, ids in attempts}
    assert [kept[step] for step in sorted(kept)] == straight
    assert all(attempt == straight[attempt[0] - 1] for attempt in attempts)
