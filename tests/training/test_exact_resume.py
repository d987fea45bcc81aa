"""Issue 4, point 1: exact resume. 2N uninterrupted steps and N steps + resume give bit-identical adapters and
identical logged losses; a resume onto changed data, model or LoRA shape is refused naming what changed."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from simulated_crash import CrashAfterStep, SimulatedCrash

from conftest import build_tiny_model, final_adapter, metric_records, tiny_run_config, write_qa_jsonl
from lorakit.cli.app import run_cli
from lorakit.errors import CheckpointError
from lorakit.run.checkpoints import save_checkpoint
from lorakit.training.loop import train
from lorakit.training.metrics import SilentReporter
from lorakit.training.run_dir import load_checkpoint
from lorakit.training.session import build_session


def _config(model_dir, data_file, run_dir, **training):
    # Dropout, a cosine schedule with warmup, a logging window spanning the checkpoint and a validation
    # set make every piece of saved state matter: RNG, scheduler, window sums, early-stopping bests.
    settings = dict(max_steps=8, save_steps=4, logging_steps=3, eval_steps=2, lr_scheduler="cosine",
                    warmup_steps=2, early_stopping_patience=50, batch_size=2, gradient_accumulation_steps=2)
    settings.update(training)
    return tiny_run_config(model_dir, data_file, run_dir, **settings)


def _logged_losses(run_dir):
    records = metric_records(run_dir)
    return [(r["step"], r.get("train_loss"), r.get("val_loss")) for r in records]


def assert_bit_identical(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), f"{key} differs"


def test_exact_resume_n_plus_n_steps_is_bit_identical_to_2n(tiny_llama_dir, qa_file, tmp_path):
    straight = tmp_path / "straight"
    train(_config(tiny_llama_dir, qa_file, straight))

    resumed = tmp_path / "resumed"
    config = _config(tiny_llama_dir, qa_file, resumed)
    with pytest.raises(SimulatedCrash):
        train(config, reporter=CrashAfterStep(6))  # dies after step 6; the checkpoint is step 4
    assert not (resumed / "final").exists()
    result = train(config, resume=True)

    assert result.steps == 8
    assert_bit_identical(final_adapter(straight), final_adapter(resumed))
    assert _logged_losses(straight) == _logged_losses(resumed)
    assert [s for s, train_loss, _ in _logged_losses(resumed) if train_loss is not None] == [3, 6, 8]
    straight_manifest = json.loads((straight / "final" / "manifest.json").read_text())
    resumed_manifest = json.loads((resumed / "final" / "manifest.json").read_text())
    assert straight_manifest["metrics"] == resumed_manifest["metrics"]


def test_exact_resume_checkpoint_restores_every_rng_and_the_data_position(tiny_llama_dir, qa_file, tmp_path):
    from lorakit.run.checkpoints import TrainerState
    from lorakit.training.schedule import build_optimizer, build_scheduler

    config = _config(tiny_llama_dir, qa_file, tmp_path / "run")
    session = build_session(config, SilentReporter())
    optimizer = build_optimizer(session.model, config.training)
    scheduler = build_scheduler(optimizer, config.training)
    state = TrainerState(step=3, epoch=1, batch_in_epoch=2, early_stopping={"best_loss": 1.5, "best_step": 2,
                         "evals_without_improvement": 1, "patience": 50, "min_delta": 0.0})
    random.seed(11), np.random.seed(12), torch.manual_seed(13)
    path = save_checkpoint(tmp_path / "run", model=session.model, optimizer=optimizer, scheduler=scheduler, scaler=None,
                           state=state, identity=session.identity, config_yaml="", keep=2)
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    loaded, identity = load_checkpoint(path, model=session.model, optimizer=optimizer, scheduler=scheduler, scaler=None)
    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(3), expected[2])
    assert (loaded.step, loaded.epoch, loaded.batch_in_epoch) == (3, 1, 2)
    assert loaded.early_stopping["best_loss"] == 1.5 and identity == session.identity


def _change_data(config, tmp_path):
    changed = write_qa_jsonl(tmp_path / "qa.jsonl")
    with open(changed, "a") as handle:
        handle.write(json.dumps({"instruction": "What is a pulse?", "response": "The heartbeat felt in an artery."}) + "\n")
    return config


def _change_lora_rank(config, tmp_path):
    config.lora.r = 8
    return config


def _change_targets(config, tmp_path):
    config.lora.target_modules = ["q_proj", "v_proj"]
    return config


def _change_weights(config, tmp_path):
    # Same folder, different weights: only the model fingerprint can tell.
    model_dir = tmp_path / "model"
    shutil.rmtree(model_dir)
    build_tiny_model(model_dir, seed=1)
    return config


def _crash_after_step_3(model_dir, data, run_dir) -> None:
    with pytest.raises(SimulatedCrash):
        train(_config(model_dir, data, run_dir, max_steps=6, save_steps=2), reporter=CrashAfterStep(3))


@pytest.fixture(scope="module")
def crashed_after_step_3(tmp_path_factory):
    """A folder with a tiny model, its data and a run of them crashed after step 3 (checkpoint at step 2), made once;
    a test resumes its own copy of the run (the checkpoint names the model by its folder: the model is shared)."""
    root = tmp_path_factory.mktemp("crashed")
    _crash_after_step_3(build_tiny_model(root / "model"), write_qa_jsonl(root / "qa.jsonl"), root / "run")
    return root


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (_change_data, "the training data changed"),
        (_change_lora_rank, "the LoRA rank changed"),
        (_change_targets, "the LoRA target modules changed"),
        (_change_weights, "the base model's weights changed"),
    ],
)
def test_exact_resume_refuses_changed_data_model_or_lora_shape(tmp_path, request, change, named):
    if change is _change_weights:  # it rewrites the model folder the checkpoint names: a model and run of its own
        model_dir = build_tiny_model(tmp_path / "model")
        _crash_after_step_3(model_dir, write_qa_jsonl(tmp_path / "qa.jsonl"), tmp_path / "run")
    else:
        shared = request.getfixturevalue("crashed_after_step_3")
        model_dir = shared / "model"
        shutil.copytree(shared / "run", tmp_path / "run")
        shutil.copy(shared / "qa.jsonl", tmp_path / "qa.jsonl")
    config = _config(model_dir, tmp_path / "qa.jsonl", tmp_path / "run", max_steps=6, save_steps=2)
    config = change(config, tmp_path)
    with pytest.raises(CheckpointError, match=f"Cannot resume: {named}") as info:
        train(config, resume=True)
    assert "checkpoint has" in info.value.message


def _cli_config(tmp_path, model_dir, **training):
    data = write_qa_jsonl(tmp_path / "qa.jsonl")
    train_settings = {"batch_size": 2, "max_steps": 2, "learning_rate": 1e-2, "logging_steps": 1, "eval_steps": 2,
                      "save_steps": 2}
    train_settings.update(training)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "seed": 1, "output_dir": str(tmp_path / "run"), "model": {"name": str(model_dir), "max_length": 128},
        "lora": {"r": 4, "alpha": 8}, "training": train_settings,
        "data": {"train_file": str(data), "system_prompt": "Be careful."},
    }))
    return path


def test_exact_resume_on_a_finished_run_says_it_is_finished(tiny_llama_dir, tmp_path, capsys):
    config = _cli_config(tmp_path, tiny_llama_dir)
    assert run_cli(["train", str(config)]) == 0
    capsys.readouterr()
    assert run_cli(["train", str(config), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "is already finished (2 steps)" in err and "raise training.max_steps" in err
    assert "Traceback" not in err


def test_exact_resume_after_an_early_stop_does_not_train_past_it(tiny_llama_dir, qa_file, tmp_path):
    # Learning rate 0 keeps the validation loss flat, so patience 1 stops at the second evaluation (step 4).
    config = _config(tiny_llama_dir, qa_file, tmp_path / "run", learning_rate=1e-12, early_stopping_patience=1,
                     max_steps=20, save_steps=50)
    first = train(config)
    assert first.stopped_early and first.steps == 4
    shutil.rmtree(tmp_path / "run" / "final")  # as if killed between the last checkpoint and final/
    again = train(config, resume=True)
    assert again.stopped_early and again.steps == 4
    # final/ ships the best evaluation (step 2), whose checkpoint was saved when it was the best.
    assert_bit_identical(final_adapter(tmp_path / "run"), load_file(tmp_path / "run" / "checkpoints" / "step-00000002"
                                                                / "adapter_model.safetensors"))
    assert again.metrics["adapter_step"] == 2 and again.metrics["last_step"] == 4


def test_exact_resume_before_the_first_checkpoint_starts_from_step_0(tiny_llama_dir, qa_file, tmp_path):
    config = _config(tiny_llama_dir, qa_file, tmp_path / "run", max_steps=4, save_steps=3)
    with pytest.raises(SimulatedCrash):
        train(config, reporter=CrashAfterStep(2))
    assert train(config, resume=True).steps == 4
    straight = _config(tiny_llama_dir, qa_file, tmp_path / "straight", max_steps=4, save_steps=3)
    train(straight)
    assert_bit_identical(final_adapter(tmp_path / "run"), final_adapter(tmp_path / "straight"))


def test_exact_resume_of_a_checkpoint_planned_before_the_micro_batch_cap(tiny_llama_dir, qa_file, tmp_path, monkeypatch):
    """batch_size auto on 8 training examples: a checkpoint planned before the planner capped an auto micro-batch at the
    rows the data fills (micro-batch 64) resumes under the cap (micro-batch 8): both take all 8 examples in one
    micro-batch, so the run is not refused and ends bit-identical to an uninterrupted capped run."""
    from lorakit.plan import candidates

    straight = tmp_path / "straight"
    train(_config(tiny_llama_dir, qa_file, straight, batch_size="auto"))
    assert yaml.safe_load((straight / "final" / "config.yaml").read_text())["training"]["batch_size"] == 8

    resumed = tmp_path / "resumed"
    config = _config(tiny_llama_dir, qa_file, resumed, batch_size="auto")
    capped = candidates.micro_batch_choices
    monkeypatch.setattr(candidates, "micro_batch_choices", lambda max_length, data_rows=None: capped(max_length))
    with pytest.raises(SimulatedCrash):
        train(config, reporter=CrashAfterStep(6))
    checkpoint = max((resumed / "checkpoints").glob("step-*"))  # the newest: the one a resume reads
    assert yaml.safe_load((checkpoint / "config.yaml").read_text())["training"]["batch_size"] == 64
    monkeypatch.setattr(candidates, "micro_batch_choices", capped)
    result = train(config, resume=True)

    assert result.steps == 8
    assert_bit_identical(final_adapter(straight), final_adapter(resumed))
    assert _logged_losses(straight) == _logged_losses(resumed)
