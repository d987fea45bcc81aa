"""The planner's last lever (plan/dequantized.py): how many decoder layers keep their nf4 weights dequantized, by the
memory the chosen plan leaves, counted in the predicted peak, and never taken from the plan's other choices."""

from __future__ import annotations

from dataclasses import replace

import pytest

from conftest import PHI4_MINI
from lorakit.config import RunConfig
from lorakit.plan.candidates import Candidate
from lorakit.plan.dequantized import keep_dequantized_layers, memory_to_spare
from lorakit.plan.memory import GIB, ModelShape, TrainSettings, estimate_peak_memory
from lorakit.plan.run_plan import plan_training, resolve_auto_settings

SHAPE = ModelShape("llama", hidden=64, intermediate=128, layers=4, heads=4, kv_heads=2, head_dim=16, vocab=1000,
                   tied_embeddings=True)
# one decoder layer's linear weights in bf16: q 64x64, k and v 64x32, o 64x64, gate and up 64x128, down 128x64
LAYER_BYTES = (64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128) * 2


def _candidate(quantization="nf4", layers=0) -> Candidate:
    settings = TrainSettings(quantization, 2, 8, "all-linear", False, tokens_per_micro_batch=256,
                             dequantized_layers=layers)
    memory = estimate_peak_memory(SHAPE, settings)
    return Candidate(settings, 1, memory, 1.0, True)


def _needs(layers: int) -> int:
    """What the GPU must have for the candidate with `layers` layers kept."""
    return _candidate(layers=layers).estimate.peak_on_gpu()


def test_each_kept_layer_adds_exactly_its_dequantized_weights_to_the_predicted_peak():
    assert SHAPE.linear_params_per_layer * 2 == LAYER_BYTES
    none, three = _candidate().estimate, _candidate(layers=3).estimate
    assert three.peak_allocated - none.peak_allocated == three.dequantized_weights == 3 * LAYER_BYTES
    assert ("dequantized_weights", 3 * LAYER_BYTES / GIB) in three.rows()
    assert "dequantized_weights" not in dict(none.rows())  # no row where nothing is kept


@pytest.mark.parametrize(("budget", "kept"), [
    (10 * GIB, 4),  # room for every layer
    ("exactly 3", 3), ("just under 3", 2), ("exactly 1", 1),
    ("the plan alone", 0),  # nothing left
])
def test_the_planner_keeps_as_many_layers_as_the_memory_left_allows(budget, kept):
    budgets = {"exactly 3": _needs(3), "just under 3": _needs(3) - 1, "exactly 1": _needs(1),
               "the plan alone": _needs(0)}
    chosen = _candidate()
    planned = keep_dequantized_layers(SHAPE, chosen, budgets.get(budget, budget))
    assert planned.settings.dequantized_layers == kept
    assert planned.settings == replace(chosen.settings, dequantized_layers=kept)  # nothing else changes
    assert planned.estimate.peak_allocated - chosen.estimate.peak_allocated == kept * LAYER_BYTES


def test_no_layers_kept_for_bf16_an_unfit_plan_or_with_the_lever_off(monkeypatch):
    assert keep_dequantized_layers(SHAPE, _candidate("none"), 10 * GIB).settings.dequantized_layers == 0
    unfit = replace(_candidate(), fits=False)
    assert keep_dequantized_layers(SHAPE, unfit, 10 * GIB) is unfit
    monkeypatch.setenv("LORAKIT_DISABLE", "dequantized_weights")
    assert keep_dequantized_layers(SHAPE, _candidate(), 10 * GIB).settings.dequantized_layers == 0


def _config(**training) -> RunConfig:
    return RunConfig.model_validate({
        "model": {"name": "phi4", "max_length": 512, "quantization": "nf4"},
        "training": {"packing": True, "batch_size": "auto", "gradient_checkpointing": "auto", **training},
        "data": {"train_file": "x.jsonl"},
    })


@pytest.mark.parametrize(("gpu_gib", "kept", "text"), [
    (80, 32, "dequantized weights kept: 32 of 32 layers, 6.0 GiB"),
    (8, 0, "dequantized weights kept: none"),  # the plan checkpoints 31 layers to fit: no memory to spare
])
def test_phi4_mini_plans_keep_only_what_micro_batch_and_checkpointing_leave_spare(gpu_gib, kept, text, monkeypatch):
    """The whole H100 keeps every layer; the 8 GB card, whose plan gave up speed to fit, none; both with the
    micro-batch and checkpointing of the plan without the lever."""
    plan = plan_training(_config(), PHI4_MINI, gpu_gib * GIB, dtype_bytes=2, nf4_available=True)
    monkeypatch.setenv("LORAKIT_DISABLE", "dequantized_weights")
    without = plan_training(_config(), PHI4_MINI, gpu_gib * GIB, dtype_bytes=2, nf4_available=True)
    assert plan.dequantized_layers == kept and without.dequantized_layers == 0
    assert (plan.micro_batch, plan.checkpointed_layers) == (without.micro_batch, without.checkpointed_layers)
    # per layer: qkv_proj 3072 x 5120, o_proj 3072 x 3072, gate_up_proj 3072 x 16384, down_proj 8192 x 3072, in bf16
    assert plan.chosen.estimate.peak_allocated - without.chosen.estimate.peak_allocated == kept * 3072 * 32768 * 2
    assert plan.chosen.estimate.peak_on_gpu() <= gpu_gib * GIB
    assert plan.dequantized_text == text


def test_memory_to_spare_only_where_the_plan_is_the_fastest_candidate_fitting_or_not():
    fastest, slower = _candidate(), replace(_candidate(), relative_time=1.2)
    assert memory_to_spare(fastest, [fastest, slower]) and memory_to_spare(fastest, [fastest])
    assert not memory_to_spare(slower, [slower, replace(fastest, fits=False)])


def test_fixed_nf4_settings_get_the_lever_too_but_not_several_processes_or_the_cpu():
    config = _config(batch_size=16, gradient_checkpointing=False)
    resolved = resolve_auto_settings(config, PHI4_MINI, cuda=True, dtype_bytes=2, nf4_available=True,
                                     memory_bytes=80 * GIB)
    assert (resolved.dequantized_layers, resolved.checkpointed_layers, resolved.config) == (32, 0, config)
    assert resolved.plan.micro_batch == 16
    assert resolve_auto_settings(config, PHI4_MINI, cuda=True, dtype_bytes=2, nf4_available=True,
                                 memory_bytes=80 * GIB, world_size=2).dequantized_layers == 0
    assert resolve_auto_settings(_config(), PHI4_MINI, cuda=False, dtype_bytes=4, nf4_available=False,
                                 memory_bytes=80 * GIB).dequantized_layers == 0


def test_fixed_settings_keep_weights_only_within_nine_tenths_of_the_gpu():
    """The user's fixed settings leave no proof of spare memory: the kept weights may take the plan's predicted peak
    to 90% of the GPU at most (the planner's prediction margin), not to the last byte."""
    config = _config(batch_size=1, gradient_checkpointing=True).model_copy(deep=True)
    config.model.max_length = 4096
    memory = 8 * GIB
    resolved = resolve_auto_settings(config, PHI4_MINI, cuda=True, dtype_bytes=2, nf4_available=True,
                                     memory_bytes=memory)
    peak = resolved.plan.chosen.estimate.peak_on_gpu()
    one_more = replace(resolved.plan.chosen.settings, dequantized_layers=resolved.dequantized_layers + 1)
    assert 0 < resolved.dequantized_layers < 32
    assert peak <= 0.9 * memory < estimate_peak_memory(ModelShape.from_config(PHI4_MINI), one_more).peak_on_gpu()
