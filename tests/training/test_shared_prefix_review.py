"""What a review of shared-prefix packing found (session 10): a packed SFT resume that switches training.shared_prefix
is refused as a preference resume is (the layouts agree only up to float order, so the resume would not be
bit-exact); an out-of-memory re-plan counts the rows the session really computes (padded where the model could not
take the shared layout), not the ones the config asked for."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from lorakit.config import RunConfig
from lorakit.data.preference_batch import PairLayout
from lorakit.errors import CheckpointError
from lorakit.training.preference_setup import prepare_for_method
from lorakit.training.resume_drift import check_same_run


def _config(method: str = "sft", packing: bool = True, shared_prefix: bool = True) -> RunConfig:
    return RunConfig.model_validate({
        "model": {"max_length": 512}, "data": {"train_file": "x.jsonl"},
        "training": {"method": method, "packing": packing, "shared_prefix": shared_prefix},
    })


def _identity(config: RunConfig) -> dict:
    """The run-identity entries build_session records for the method (an SFT run without init_adapter touches no
    model here)."""
    return prepare_for_method(None, config, [])


def test_a_packed_sft_resume_refuses_a_switched_layout():
    saved, now = _identity(_config(shared_prefix=True)), _identity(_config(shared_prefix=False))
    with pytest.raises(CheckpointError, match=r"training.shared_prefix changed since the checkpoint .*checkpoint "
                                              r"has True, now False"):
        check_same_run(saved, now)
    check_same_run({}, now)  # a packed checkpoint from before the key was recorded still resumes
    # unpacked SFT rows are never shared: nothing recorded, so those runs resume as before
    assert _identity(_config(packing=False)) == _identity(_config(packing=False, shared_prefix=False)) == {}


def test_an_out_of_memory_replan_counts_padded_pairs_when_the_model_fell_back():
    """A DPO session whose model could not take lorakit_varlen trains on padded pairs (2 x the longest row per
    pair); the re-plan must count those, not the shared layout's |P| + |C| + |R| positions."""
    from lorakit.plan.oom import computed_config

    config = _config("dpo", packing=False)
    fell_back = SimpleNamespace(config=config, shared_prefix=False)
    shared = SimpleNamespace(config=config, shared_prefix=True)
    assert computed_config(shared) is config
    assert computed_config(fell_back).training.shared_prefix is False
    assert computed_config(fell_back).training.model_dump(exclude={"shared_prefix"}) == config.training.model_dump(
        exclude={"shared_prefix"})
    from lorakit.plan.run_plan import planned_length

    pairs = PairLayout(positions=300, keys_per_position=1.5)
    assert planned_length(computed_config(shared), 400, pairs) == 300
    assert planned_length(computed_config(fell_back), 400, pairs) == 800
