"""A preference resume is refused when its pairs would be laid out otherwise (one flat row with each pair's prompt
once, or padded rows), not when training.shared_prefix flips where it has no effect (NEFTune pads the pairs whatever
the flag says), by the same rule as packed SFT (test_packed_resume_identity.py); a checkpoint written before the
identity recorded whether sharing took effect (its flag alone, `preference_shared_prefix`) resumes as it did then."""

from __future__ import annotations

import json
import logging

import pytest
from simulated_crash import CrashAfterStep, SimulatedCrash

from conftest import QA_PAIRS, tiny_run_config
from lorakit.config import RunConfig
from lorakit.errors import CheckpointError
from lorakit.run.checkpoints import latest_good_checkpoint, read_identity
from lorakit.training.loop import train
from lorakit.training.preference_setup import method_identity
from lorakit.training.resume_drift import check_same_run

FLIPPED = r"training.shared_prefix changed since the checkpoint \({}: checkpoint has True, now False\)"


def _now(shared_prefix: bool, neftune: bool = True, shares_prefixes: bool | None = None) -> dict:
    """The method identity build_session records for a SimPO run; `shares_prefixes`: what takes_shared_prefixes
    decided (by default what the config allows: the model takes the shared layout)."""
    config = RunConfig.model_validate(
        {
            "data": {"train_file": "x.jsonl"},
            "training": {
                "method": "simpo",
                "shared_prefix": shared_prefix,
                "neftune_noise_alpha": 5.0 if neftune else None,
            },
        }
    )
    taken = config.training.shares_prefixes if shares_prefixes is None else shares_prefixes
    return method_identity(config, taken)


def _before_the_effect_was_recorded(identity: dict) -> dict:
    """The identity as lorakit wrote it until session 13: the flag alone."""
    return {key: value for key, value in identity.items() if key != "preference_pairs_share_prefixes"}


def test_the_identity_records_whether_the_pairs_share_prefixes():
    assert _now(True) == {
        "training_method": "simpo",
        "preference_beta": 0.1,
        "preference_shared_prefix": True,
        "preference_pairs_share_prefixes": False,
        "simpo_gamma": 0.5,
    }  # NEFTune: padded pairs
    assert _now(True, neftune=False)["preference_pairs_share_prefixes"] is True
    assert _now(True, neftune=False, shares_prefixes=False)["preference_pairs_share_prefixes"] is False


def test_the_recorded_pair_layout_decides_once_the_checkpoint_has_it():
    check_same_run(_now(True), _now(False))  # NEFTune: padded pairs either way
    check_same_run(_now(True, neftune=False, shares_prefixes=False), _now(False, neftune=False))  # the model fell back
    with pytest.raises(CheckpointError, match=FLIPPED.format("preference_pairs_share_prefixes")):
        check_same_run(_now(True, neftune=False), _now(False, neftune=False))


def test_a_checkpoint_in_the_earlier_format_resumes_and_still_refuses_a_flipped_flag():
    saved = _before_the_effect_was_recorded(_now(True))
    check_same_run(saved, _now(True))
    with pytest.raises(CheckpointError, match=FLIPPED.format("preference_shared_prefix")):
        check_same_run(saved, _now(False))


def _pairs_file(path):
    rows = [
        {"prompt": q, "chosen": a, "rejected": QA_PAIRS[(i + 1) % len(QA_PAIRS)][1]}
        for i, (q, a) in enumerate(QA_PAIRS)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _crashed_run(tiny_llama_dir, pairs, run, **training):
    config = tiny_run_config(tiny_llama_dir, pairs, run, method="simpo", **training)
    with pytest.raises(SimulatedCrash):
        train(config, reporter=CrashAfterStep(3))  # the checkpoint is step 2 of 4
    return latest_good_checkpoint(run)


def test_a_neftune_simpo_run_resumes_with_the_flag_flipped_and_a_shared_one_refuses(tiny_llama_dir, tmp_path, caplog):
    pairs = _pairs_file(tmp_path / "pairs.jsonl")
    checkpoint = _crashed_run(tiny_llama_dir, pairs, tmp_path / "neftune", neftune_noise_alpha=5.0)
    identity = read_identity(checkpoint)
    assert (identity["preference_shared_prefix"], identity["preference_pairs_share_prefixes"]) == (True, False)
    flipped = tiny_run_config(
        tiny_llama_dir, pairs, tmp_path / "neftune", method="simpo", neftune_noise_alpha=5.0, shared_prefix=False
    )
    with caplog.at_level(logging.WARNING, logger="lorakit"):
        assert train(flipped, resume=True).steps == 4
    assert any(
        "training.shared_prefix: checkpoint has True, now False (rows are laid out as before" in r.getMessage()
        for r in caplog.records
    )

    checkpoint = _crashed_run(tiny_llama_dir, pairs, tmp_path / "prefix-sharing-run")
    assert read_identity(checkpoint)["preference_pairs_share_prefixes"] is True
    padded = tiny_run_config(tiny_llama_dir, pairs, tmp_path / "prefix-sharing-run", method="simpo", shared_prefix=False)
    with pytest.raises(CheckpointError, match="Cannot resume: " + FLIPPED.format("preference_pairs_share_prefixes")):
        train(padded, resume=True)
