"""Issue 22, drift on resume: a resume with changed training settings is refused naming each key with its old
and new value; the settings that may change are named in a WARNING and recorded in final/config.yaml and the
manifest; another tokenizer, library version or GPU is refused or named (training/resume_drift.py)."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import yaml

from conftest import build_tiny_model, tiny_run_config, write_qa_jsonl
from lorakit.errors import CheckpointError
from lorakit.training.loop import train
from simulated_crash import CrashAfterStep, SimulatedCrash


@pytest.fixture(scope="module")
def crashed_run(tmp_path_factory):
    """A run killed after step 3 of 4, whose newest checkpoint is step 2 (copied by each test)."""
    root = tmp_path_factory.mktemp("drift")
    model_dir = build_tiny_model(root / "model")
    data = write_qa_jsonl(root / "qa.jsonl")
    with pytest.raises(SimulatedCrash):
        train(tiny_run_config(model_dir, data, root / "run"), reporter=CrashAfterStep(3))
    return model_dir, data, root / "run"


def _resume_config(crashed_run, tmp_path, **changes):
    model_dir, data, run = crashed_run
    shutil.copytree(run, tmp_path / "run")
    config = tiny_run_config(model_dir, data, tmp_path / "run")
    for dotted, value in changes.items():
        section, _, key = dotted.rpartition("__")
        setattr(getattr(config, section) if section else config, key, value)
    return config


@pytest.mark.parametrize(("change", "value", "named"), [
    ("training__learning_rate", 0.02, "training.learning_rate: checkpoint has 0.01, now 0.02 (the optimizer and "
     "scheduler continue from the checkpoint's learning rate, so the new one would be recorded but not used)"),
    ("data__validation_split", 0.3, "data.validation_split: checkpoint has 0.2, now 0.3 (the data would be "
     "re-split, scoring examples already trained on as validation)"),
])
def test_resume_refuses_a_changed_training_setting_naming_old_and_new(crashed_run, tmp_path, change, value, named):
    config = _resume_config(crashed_run, tmp_path, **{change: value})
    with pytest.raises(CheckpointError) as info:
        train(config, resume=True)
    key = change.replace("__", ".")
    assert info.value.message.startswith("Cannot resume: ") and f"{key} changed since the checkpoint" in info.value.message
    assert named in info.value.message
    assert info.value.hint == ("Restore the checkpoint's settings (its config.yaml holds them all), or start a new "
                               "run: --overwrite, or another output_dir.")
    assert not (tmp_path / "run" / "final").exists()


def test_resume_names_every_changed_setting_in_one_message(crashed_run, tmp_path):
    config = _resume_config(crashed_run, tmp_path, training__lr_scheduler="cosine", training__warmup_steps=2,
                            training__weight_decay=0.1, training__max_grad_norm=None, data__test_split=0.1,
                            lora__dropout=0.0, lora__r=8)
    with pytest.raises(CheckpointError) as info:
        train(config, resume=True)
    assert info.value.message.startswith(
        "Cannot resume: the LoRA rank, data.test_split, lora.dropout, training.lr_scheduler, training.max_grad_norm, "
        "training.warmup_steps, training.weight_decay changed since the checkpoint (lora_r: checkpoint has 4, now 8; "
        "data.test_split: checkpoint has 0.2, now 0.1 (the data would be re-split, scoring examples already trained "
        "on as test); lora.dropout: checkpoint has 0.1, now 0.0 (the steps so far trained with the checkpoint's "
        "dropout); training.lr_scheduler: checkpoint has 'constant', now 'cosine' (the learning rate would jump to "
        "another schedule mid-run); training.max_grad_norm: checkpoint has 1.0, now None; training.warmup_steps: "
        "checkpoint has 0, now 2 (the learning rate would jump to another schedule mid-run); training.weight_decay: "
        "checkpoint has 0.0, now 0.1 (the optimizer continues with the checkpoint's weight decay)).")
    assert "lora.r:" not in info.value.message  # named once, by the identity check


def test_resume_with_a_legitimate_change_warns_and_records_it(crashed_run, tmp_path, caplog, monkeypatch):
    from lorakit.training import run_dir

    real = run_dir.current_environment
    monkeypatch.setattr(run_dir, "current_environment", lambda device: {**real(device), "gpu": "Another GPU"})
    config = _resume_config(crashed_run, tmp_path, training__max_steps=5, training__logging_steps=2,
                            inference__max_new_tokens=3)
    with caplog.at_level(logging.WARNING, logger="lorakit"):
        train(config, resume=True)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert ("Resuming with changed settings: training.logging_steps: checkpoint has 1, now 2 (train loss is logged "
            "at the new interval); training.max_steps: checkpoint has 4, now 5 (the learning-rate schedule of the "
            "remaining steps follows the new total). final/config.yaml and the manifest record the new values."
            ) in warnings
    assert ("Resuming on another environment than step-00000002 was saved with (gpu None -> Another GPU): the "
            "continuation is not promised to be bit-identical to an uninterrupted run.") in warnings
    assert not any("max_new_tokens" in w for w in warnings)  # inference settings are not training settings
    final = tmp_path / "run" / "final"
    assert yaml.safe_load((final / "config.yaml").read_text())["training"]["max_steps"] == 5
    manifest = json.loads((final / "manifest.json").read_text())
    assert manifest["resumes"] == [{
        "step": 2, "checkpoint": "step-00000002",
        "settings": {"training.logging_steps": {"checkpoint": 1, "now": 2},
                     "training.max_steps": {"checkpoint": 4, "now": 5}},
        "environment": {"gpu": {"checkpoint": None, "now": "Another GPU"}},
    }]
    assert manifest["metrics"]["steps"] == 5


def test_checkpoint_records_library_versions_and_gpu(crashed_run):
    from lorakit.run.manifest import package_versions

    state = json.loads((crashed_run[2] / "checkpoints" / "step-00000002" / "trainer_state.json").read_text())
    versions = package_versions()
    assert state["environment"] == {"lorakit": versions["lorakit"], "torch": versions["torch"],
                                    "transformers": versions["transformers"], "peft": versions["peft"], "gpu": None}


def test_an_edited_tokenizer_refuses_a_resume(crashed_run, tmp_path):
    from transformers import AutoTokenizer

    from lorakit.run.checkpoints import read_identity
    from lorakit.training.resume_drift import check_same_run
    from lorakit.model.load import tokenizer_fingerprint

    model_dir = crashed_run[0]
    identity = read_identity(crashed_run[2] / "checkpoints" / "step-00000002")
    assert identity["tokenizer_sha256"] == tokenizer_fingerprint(AutoTokenizer.from_pretrained(model_dir))
    edited = shutil.copytree(model_dir, tmp_path / "model", ignore=shutil.ignore_patterns("*.safetensors"))
    template = edited / "chat_template.jinja"  # renders the same text, but is not the same template
    template.write_text(template.read_text() + "{# edited #}")
    current = {**identity, "tokenizer_sha256": tokenizer_fingerprint(AutoTokenizer.from_pretrained(edited))}
    with pytest.raises(CheckpointError, match=r"^Cannot resume: the tokenizer \(its vocabulary, special tokens or "
                       r"chat template\) changed since the checkpoint \(tokenizer_sha256: checkpoint has '"):
        check_same_run(identity, current)
    check_same_run({k: v for k, v in identity.items() if k != "tokenizer_sha256"}, current)  # an older checkpoint
