"""A packed SFT resume is refused when its rows would be laid out otherwise (shared prefixes or whole examples),
not when training.shared_prefix flips where it has no effect (NEFTune packs examples whole whatever the flag); a
checkpoint written before the identity recorded whether sharing took effect (its flag alone, `packed_shared_prefix`)
resumes as it did then."""

from __future__ import annotations

import logging
import shutil
from types import SimpleNamespace

import pytest
from simulated_crash import CrashAfterStep, SimulatedCrash

from conftest import build_tiny_model, tiny_run_config, write_qa_jsonl
from lorakit.errors import CheckpointError
from lorakit.run.checkpoints import latest_good_checkpoint, read_identity
from lorakit.training import run_dir
from lorakit.training.loop import train
from lorakit.training.preference_setup import method_identity
from lorakit.training.resume_drift import check_same_run

# A packed NEFTune run's identity as lorakit wrote it until session 12: the flag alone, though sharing was off.
TODAYS_NEFTUNE_IDENTITY = {
    "model_id": "tiny", "model_revision": None, "model_fingerprint": "f" * 64, "data_sha256": "d" * 64, "lora_r": 4,
    "lora_alpha": 8, "lora_target_modules": ["q_proj", "v_proj"], "max_length": 128, "system_prompt_sha256": "s" * 64,
    "seed": 7, "effective_batch_size": 2, "batch_size": 2, "packing": True, "neftune_noise_alpha": 5.0,
    "tokenizer_sha256": "t" * 64, "packed_shared_prefix": True,
}


def _now(shared_prefix: bool, neftune: bool = True) -> dict:
    """The identity build_session records now for TODAYS_NEFTUNE_IDENTITY's run with `shared_prefix`."""
    from lorakit.config import RunConfig

    config = RunConfig.model_validate({"data": {"train_file": "x.jsonl"}, "training": {
        "packing": True, "shared_prefix": shared_prefix, "neftune_noise_alpha": 5.0 if neftune else None}})
    rest = {key: value for key, value in TODAYS_NEFTUNE_IDENTITY.items() if key != "packed_shared_prefix"}
    return {**rest, **method_identity(config, config.training.shares_prefixes)}


def test_a_checkpoint_in_todays_format_resumes_and_still_refuses_a_flipped_flag():
    assert _now(True)["packed_rows_share_prefixes"] is False  # NEFTune: sharing off
    check_same_run(TODAYS_NEFTUNE_IDENTITY, _now(True))
    with pytest.raises(CheckpointError, match=r"training.shared_prefix changed since the checkpoint "
                                              r"\(packed_shared_prefix: checkpoint has True, now False\)"):
        check_same_run(TODAYS_NEFTUNE_IDENTITY, _now(False))


def test_the_recorded_layout_decides_once_the_checkpoint_has_it():
    check_same_run(_now(True), _now(False))  # NEFTune: whole examples either way
    shared, whole = _now(True, neftune=False), _now(False, neftune=False)
    with pytest.raises(CheckpointError, match=r"training.shared_prefix changed since the checkpoint "
                                              r"\(packed_rows_share_prefixes: checkpoint has True, now False\)"):
        check_same_run(shared, whole)


def test_a_packed_neftune_run_resumes_with_the_flag_flipped_and_names_it(tmp_path, caplog, monkeypatch):
    """...unless its checkpoint predates the recorded layout (no packed_* key): then the flag is all it has, and a
    flip is refused, as it was before."""
    model_dir = build_tiny_model(tmp_path / "model")
    data = write_qa_jsonl(tmp_path / "qa.jsonl")
    config = tiny_run_config(model_dir, data, tmp_path / "run", packing=True, neftune_noise_alpha=5.0)
    with pytest.raises(SimulatedCrash):
        train(config, reporter=CrashAfterStep(3))
    shutil.copytree(tmp_path / "run", tmp_path / "flipped")
    flipped = tiny_run_config(model_dir, data, tmp_path / "flipped", packing=True, neftune_noise_alpha=5.0,
                              shared_prefix=False)
    # The same checkpoint as lorakit wrote it before it recorded the layout; the flipped run's identity (what
    # build_session records for it, without loading a model again): refused before any tensor is read.
    checkpoint = latest_good_checkpoint(tmp_path / "run")
    resuming = SimpleNamespace(config=flipped, identity={**read_identity(checkpoint), "packed_shared_prefix": False})
    with monkeypatch.context() as patched:
        patched.setattr(run_dir, "read_identity", lambda path: {
            key: value for key, value in read_identity(path).items()
            if key not in ("packed_shared_prefix", "packed_rows_share_prefixes")})
        with pytest.raises(CheckpointError, match=r"training.shared_prefix: checkpoint has True, now False \(the "
                                                  r"checkpoint does not record whether its rows shared prefixes"):
            run_dir.resume_state(tmp_path / "run", resuming, None, None, None, None, None)
    with caplog.at_level(logging.WARNING, logger="lorakit"):
        assert train(flipped, resume=True).steps == 4
    assert any("training.shared_prefix: checkpoint has True, now False (rows are laid out as before" in r.getMessage()
               for r in caplog.records)


def test_the_identity_records_the_sessions_layout_not_the_configs(tmp_path, monkeypatch):
    """A model whose LM head the fused loss cannot run on packs examples whole with the flag on and no NEFTune
    (training/session.takes_shared_prefixes; the tiny model shares without the patch): the identity says so, as
    the collate does."""
    from lorakit.training import session as session_module
    from lorakit.training.metrics import SilentReporter

    model_dir = build_tiny_model(tmp_path / "model")
    config = tiny_run_config(model_dir, write_qa_jsonl(tmp_path / "qa.jsonl"), tmp_path / "run", packing=True)
    assert config.training.shares_prefixes
    monkeypatch.setattr(session_module, "lm_head_is_fusable", lambda base: False)
    session = session_module.build_session(config, SilentReporter())
    assert session.shared_prefix is False
    assert session.identity["packed_rows_share_prefixes"] is False and session.identity["packed_shared_prefix"] is True
