"""The DPO memory plan counts the micro-batches shared-prefix preference pairs really form: the b largest pairs (any
order), or the run's own micro-batches where the session gives its data order, never b x the largest pair; and it
predicts the session-10 H100 rows (bench/results/preference_speed) within 10% above what they held."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from conftest import PHI4_MINI
from lorakit.config import RunConfig
from lorakit.data.preference_batch import PairLayout
from lorakit.plan.candidates import micro_batch_settings
from lorakit.plan.config_view import pair_micro_batches, train_settings
from lorakit.plan.memory import ModelShape, estimate_peak_memory
from lorakit.plan.oom import MemorySettings, replan_for_memory
from lorakit.plan.run_plan import plan_training
from lorakit.training.batches import epoch_groups, run_pair_layout

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "preference_speed"
# Four pairs of different sizes: |P| + |C| + |R| positions and |P| + |C| + |P| + |R| keys each.
PAIRS = PairLayout(positions=(100, 400, 250, 150), keys=(140, 520, 400, 180))


def _session10_rows() -> list[dict]:
    return [json.loads(line) for line in (RESULTS / "table_h100_session10" / "rows.jsonl").read_text().splitlines()]


def _config(**training) -> RunConfig:
    return RunConfig.model_validate({
        "model": {"quantization": "nf4", "max_length": 512}, "data": {"train_file": "x.jsonl"},
        "training": {"method": "dpo", "batch_size": 4, "gradient_checkpointing": True, **training}})


def test_four_pairs_are_planned_as_their_sum_not_four_times_the_largest():
    plan = plan_training(_config(), PHI4_MINI, 80 * 2**30, dtype_bytes=2, nf4_available=True, pairs=PAIRS)
    assert plan.chosen.settings.tokens_per_micro_batch == 900  # 100 + 400 + 250 + 150, not 4 x 400
    assert plan.chosen.settings.keys_per_token == 1240 / 900  # the keys of all four, not 4 x the largest ratio (1.6)
    assert PAIRS.micro_batch(2) == (650, 920)  # the two largest: 400 + 250 positions, 520 + 400 keys


def test_with_the_run_order_the_plan_counts_the_micro_batches_the_run_trains_on():
    """Order [0, 1, 2, 3] cut in 2s: micro-batches {100, 400} and {250, 150}: at most 500 positions, 660 keys (the
    second one's 580 and the first one's 660), where any order could put 650 positions together."""
    ordered = replace(PAIRS, order=lambda epoch: [0, 1, 2, 3], micro_batches=2)
    plan = plan_training(_config(batch_size=2), PHI4_MINI, 80 * 2**30, dtype_bytes=2, nf4_available=True, pairs=ordered)
    assert (plan.chosen.settings.tokens_per_micro_batch, plan.chosen.settings.keys_per_token) == (500, 660 / 500)


def test_the_planner_bounds_the_trainers_own_micro_batches():
    """run_pair_layout's order is the one the trainer cuts (training/batches.epoch_groups), over every epoch the run
    reaches: 7 pairs, 3 per micro-batch, 5 micro-batches = 3 epochs of 3, 2 of them in the second one."""
    sizes = (30, 5, 17, 40, 8, 22, 11)
    config = _config(batch_size=3).model_copy(update={"seed": 3})
    config.training.max_steps, config.training.gradient_accumulation_steps = 5, 1
    layout = run_pair_layout(PairLayout(sizes, tuple(2 * s for s in sizes)), config)
    groups = [g for epoch in range(2) for g in epoch_groups(list(sizes), 3, 3, epoch)][:5]
    assert layout.micro_batch(3) == (max(sum(sizes[i] for i in g) for g in groups),
                                     max(sum(2 * sizes[i] for i in g) for g in groups))
    pieces = [g[i:i + 2] for g in groups for i in range(0, len(g), 2)]  # an out-of-memory re-plan's pieces of 2
    assert layout.micro_batch(2, cut_from=3)[0] == max(sum(sizes[i] for i in p) for p in pieces)


def test_an_out_of_memory_replan_counts_pairs_the_same_way():
    ordered = replace(PAIRS, order=lambda epoch: [2, 3, 1, 0], micro_batches=1)  # one micro-batch of all four
    config = _config()
    shape = ModelShape.from_config(PHI4_MINI)
    base = train_settings(config, "nf4", dtype_bytes=2, cuda=True, pairs=ordered)
    chosen = replan_for_memory(shape, base, MemorySettings(4, 0, False), max_length=400, memory_bytes=80 * 2**30,
                               micro_batch_layout=pair_micro_batches(config, ordered, replanning=True))
    assert chosen is not None and chosen.micro_batch == 4 and chosen.settings.tokens_per_micro_batch == 900
    # the run's micro-batch [2, 3, 1, 0] cut into pieces of 2: [2, 3] (400 positions) and [1, 0] (500)
    assert pair_micro_batches(config, ordered, replanning=True)(2) == (500, 660)


def test_the_session10_h100_rows_are_predicted_within_10_percent_above_their_peaks():
    """The plan at each row's settings, for the largest micro-batch its 10 steps trained on (4,274 positions, 5,945
    keys: bench/preference_plan_check.py rebuilds the run's data and order on a CPU), against PyTorch's measured
    peak."""
    check = {row["setting"]: row for row in json.loads((RESULTS / "plan_check" / "rows.json").read_text())}
    measured = {row["setting"]: row["peak_allocated"] for row in _session10_rows() if row["tool"] == "lorakit"}
    config = _config(batch_size=4, gradient_checkpointing="auto")
    config.model.max_length = 1024
    shape = ModelShape.from_config(PHI4_MINI)
    base = replace(train_settings(config, "nf4", dtype_bytes=2, cuda=True), kv_expanded=False)  # the H100's flash
    for setting, layers in (("8gb-qlora", 29), ("gpu-qlora", 0)):
        layout = (check[setting]["micro_batch_positions"], check[setting]["micro_batch_keys"])
        assert layout == (4274, 5945)
        predicted = estimate_peak_memory(shape, replace(micro_batch_settings(base, 0, layout=layout),
                                                        checkpointed_layers=layers)).peak_allocated
        assert 0 <= predicted / measured[setting] - 1 < 0.10, (setting, predicted / measured[setting])


def test_the_session10_padded_rows_are_predicted_within_10_percent_above_their_peaks():
    """training.shared_prefix false: 4 pairs as 8 rows of the data's longest sequence (1,015 tokens; 8,120 positions,
    which the measured steps reached), attention under a padding mask (plan/attention_memory.py: k/v repeated to every
    head, the mask per layer) and no LoRA dropout. +5.0% and +1.3% (bench/results/preference_speed/plan_check); the
    8 GB row's plan was 3.5% below its peak in session 10, and the dropout terms that stood in for the padded layout
    put the whole-GPU row 12.7% above."""
    rows = {row["setting"]: row for row in _session10_rows() if row["tool"] == "lorakit, shared_prefix off"}
    config = _config(batch_size=4, shared_prefix=False)
    config.model.max_length = 1024
    shape = ModelShape.from_config(PHI4_MINI)
    base = replace(train_settings(config, "nf4", dtype_bytes=2, cuda=True, longest_example=1015), kv_expanded=False,
                   tokens_per_micro_batch=8120)
    assert (base.padded_row_tokens, base.masked_kv_expanded, base.lora_dropout) == (1015, True, False)
    for setting, layers in (("8gb-qlora", 31), ("gpu-qlora", 0)):
        predicted = estimate_peak_memory(shape, replace(base, checkpointed_layers=layers)).peak_allocated
        over = predicted / rows[setting]["peak_allocated"] - 1
        assert 0 <= over < 0.10, (setting, over)


def test_the_planned_logits_chunk_is_the_preference_heads():
    from lorakit.plan.host_memory import CHUNK_LOGIT_ELEMENTS
    from lorakit.training import preference_loss

    assert preference_loss._CHUNK_LOGIT_ELEMENTS == CHUNK_LOGIT_ELEMENTS
