"""An `auto` micro-batch is never larger than the training data can fill: its examples or pairs, or packed, the
max_length rows its examples pack into (a micro-batch of 16 on 5 examples trains on 5, while the plan said 16 and
counted memory for 16)."""

from __future__ import annotations

from conftest import PHI4_MINI
from lorakit.config import RunConfig
from lorakit.data.render import TokenizedExample
from lorakit.data.splits import Splits
from lorakit.plan.memory import GIB
from lorakit.plan.run_plan import plan_training, resolve_auto_settings
from lorakit.training.dataset import PreparedData


def _config(**training) -> RunConfig:
    return RunConfig.model_validate(
        {
            "model": {"name": "phi4", "max_length": 512, "quantization": "nf4"},
            "training": {"packing": True, "batch_size": "auto", "gradient_checkpointing": "auto", **training},
            "data": {"train_file": "x.jsonl"},
        }
    )


def test_the_planner_caps_the_micro_batch_at_the_rows_the_data_fills():
    uncapped = plan_training(_config(), PHI4_MINI, 8 * GIB, dtype_bytes=2, nf4_available=True)
    assert uncapped.micro_batch == 16  # 16 x 512 = 8192 tokens: the largest the planner tries
    for rows, micro_batch in ((5, 5), (3, 3), (1, 1), (16, 16), (40, 16)):
        plan = plan_training(_config(), PHI4_MINI, 8 * GIB, dtype_bytes=2, nf4_available=True, data_rows=rows)
        assert plan.micro_batch == micro_batch, rows
        assert plan.chosen.settings.tokens_per_micro_batch == micro_batch * 512  # memory counted for what runs
    assert max(c.micro_batch for c in plan.candidates) == 16
    few = plan_training(_config(), PHI4_MINI, 8 * GIB, dtype_bytes=2, nf4_available=True, data_rows=5)
    assert sorted({c.micro_batch for c in few.candidates}) == [1, 2, 4, 5]


def test_a_fixed_micro_batch_is_the_users_and_stays():
    fixed = _config(batch_size=8, gradient_checkpointing=True)
    resolved = resolve_auto_settings(
        fixed, PHI4_MINI, cuda=True, dtype_bytes=2, nf4_available=True, memory_bytes=8 * GIB, data_rows=3
    )
    assert resolved.config.training.batch_size == 8
    auto = resolve_auto_settings(
        _config(), PHI4_MINI, cuda=True, dtype_bytes=2, nf4_available=True, memory_bytes=8 * GIB, data_rows=3
    )
    assert auto.config.training.batch_size == 3 and auto.plan.micro_batch == 3


def test_rows_to_fill_counts_examples_or_packed_rows():
    """Lengths 300, 200, 100, 400 in rows of 512: best fit packs [400, 100] and [300, 200], two rows."""
    examples = [TokenizedExample([1] * n, [1] * n) for n in (300, 200, 100, 400)]
    data = PreparedData(Splits(train=examples, validation=[], test=[]), data_sha256="", truncated=0, without_targets=0)
    assert data.rows_to_fill(packing=False, max_length=512) == 4
    assert data.rows_to_fill(packing=True, max_length=512) == 2
    assert data.rows_to_fill(packing=True, max_length=1024) == 1
