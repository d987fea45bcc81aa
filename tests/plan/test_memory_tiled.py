"""Issue 23, long examples on an 8 GB card: the planner tiles the MLP along the sequence by itself, only at the
lengths where offloading the layer inputs is not enough, and counts it term by term; its predictions for the
8k and 16k rows measured on an H100 (bench/results/peer_speed_honest/long_h100_session8) stay within 10%."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import PHI4_MINI
from lorakit.config import RunConfig
from lorakit.errors import ConfigError
from lorakit.plan.candidates import plan_settings
from lorakit.plan.memory import GIB, ModelShape, TrainSettings, estimate_peak_memory
from lorakit.plan.run_plan import plan_training, resolve_auto_settings

LONG_ROWS = Path(__file__).resolve().parents[2] / "bench/results/peer_speed_honest/long_h100_session8/rows.jsonl"
MIB = 2**20


def long_config(max_length: int) -> RunConfig:
    """What bench/long_context.py trains: nf4, one example per micro-batch, the user sets only max_length."""
    return RunConfig.model_validate({
        "model": {"name": "phi4", "max_length": max_length, "quantization": "nf4"},
        "training": {"packing": True, "batch_size": 1, "gradient_checkpointing": "auto"},
        "data": {"train_file": "x.jsonl"},
    })


def plan_for_8gb(max_length: int):
    return plan_training(long_config(max_length), PHI4_MINI, 8 * GIB, dtype_bytes=2, nf4_available=True)


@pytest.mark.parametrize(("max_length", "checkpointing"), [
    (8192, "31 of 32 layers"),
    (16384, "all 32 layers, offloaded to CPU"),
    (24576, "all 32 layers, offloaded to CPU, MLP in sequence chunks"),
    (32768, "all 32 layers, offloaded to CPU, MLP in sequence chunks"),
])
def test_planner_tiles_the_mlp_only_where_offload_alone_does_not_fit(max_length, checkpointing):
    plan = plan_for_8gb(max_length)
    assert plan.checkpointing_text == checkpointing
    assert plan.tiled_mlp == (max_length > 16384) == plan.chosen.settings.tiled_mlp
    assert plan.chosen.fits and plan.chosen.estimate.peak_on_gpu() <= 8 * GIB
    if not plan.tiled_mlp:  # a tiled candidate that fits was there, and ranked after the plan
        assert any(c.fits and c.settings.tiled_mlp for c in plan.candidates)


def test_32k_terms_with_the_tiled_mlp():
    """The 32k plan term by term (GiB): the backward working set is attention's backward in the recomputed layer
    (plan/memory.tiled_backward_bytes), 2.69 instead of the untiled MLP's 5.04, and the loss's 0.75 is never
    alive beside it."""
    estimate = plan_for_8gb(32768).chosen.estimate
    rows = {term: round(gib, 2) for term, gib in estimate.rows()}
    assert rows == {"weights": 2.69, "lora_states": 0.34, "saved_activations": 0.19, "backward_working": 2.69,
                    "loss": 0.75, "dequantize_buffer": 0.09, "process": 0.0, "heap_fragmentation": 0.0,
                    "loss apart from backward_working": -0.75, "peak_allocated": 6.01}
    assert round(estimate.peak_on_gpu() / GIB, 2) == 7.24
    untiled = estimate_peak_memory(ModelShape.from_config(PHI4_MINI), TrainSettings(
        "nf4", 2, 16, "all-linear", True, tokens_per_micro_batch=32768, checkpointed_layers=32,
        offload_activations=True, kv_expanded=False))
    assert round(untiled.backward_working / GIB, 2) == 5.04 and untiled.peak_on_gpu() > 8 * GIB


def test_todays_planner_within_10_percent_of_the_long_rows_measured_on_an_h100():
    """8k and 16k trained on the emulated 8 GB card (H100, allocator capped at 7.25 GiB); 24k and 32k were
    refused by the planner of that day, so there is nothing to compare yet (bench/long_context.py measures them)."""
    rows = {row["length"]: row for row in map(json.loads, LONG_ROWS.read_text().splitlines())
            if row["tool"] == "lorakit" and "peak_allocated" in row}
    assert sorted(rows) == [8192, 16384]
    for length, row in rows.items():
        predicted = plan_for_8gb(length).chosen.estimate.peak_allocated
        assert abs(predicted / row["peak_allocated"] - 1) < 0.10, (length, predicted / GIB)


def test_no_tiling_for_several_processes_or_when_asked_not_to():
    shape = ModelShape.from_config(PHI4_MINI)
    base = TrainSettings("nf4", 2, 16, "all-linear", True, tokens_per_micro_batch=32768, kv_expanded=False)
    assert not any(c.settings.tiled_mlp for c in plan_settings(shape, base, max_length=32768, gpu_memory_bytes=8 * GIB,
                                                                micro_batches=(1,), tiling=False))
    with pytest.raises(ConfigError, match="needs at least"):  # ddp on two 8 GB cards: no tiling, so 32k does not fit
        resolve_auto_settings(long_config(32768), PHI4_MINI, cuda=True, dtype_bytes=2, nf4_available=True,
                              memory_bytes=8 * GIB + 1100 * MIB, world_size=2)
    one = resolve_auto_settings(long_config(32768), PHI4_MINI, cuda=True, dtype_bytes=2, nf4_available=True,
                                memory_bytes=8 * GIB)
    assert one.tiled_mlp and one.offload_activations and one.checkpointed_layers == 32
