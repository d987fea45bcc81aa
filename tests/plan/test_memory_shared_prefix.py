"""The planner counts what a packed SFT row with shared prefixes computes (data/shared_packing.py): its positions and
the keys attention gathers, so the 8 GB plan spends the memory sharing frees on fewer checkpointed layers, and the
prediction is that of an unshared row of the same positions plus the extra keys."""

from __future__ import annotations

import random
from dataclasses import replace

from conftest import PHI4_MINI
from lorakit.config import RunConfig
from lorakit.data.shared_packing import PrefixSharing
from lorakit.plan.memory import GIB, ModelShape, estimate_peak_memory
from lorakit.plan.run_plan import plan_training

CARD = 8188 * 2**20  # the benchmark's emulated 8 GB card
# bench/peer_speed.py's data: ~269 tokens per example, of which 102 (lorakit's default system prompt) are shared.
generator = random.Random(0)
LENGTHS = tuple(generator.randint(150, 500) for _ in range(2048))
SHARING = PrefixSharing(LENGTHS, tuple(102 for _ in LENGTHS))


def _config(shared_prefix: bool) -> RunConfig:
    return RunConfig.model_validate({
        "model": {"name": "phi4", "max_length": 512, "quantization": "nf4"},
        "training": {"packing": True, "batch_size": 16, "gradient_checkpointing": "auto", "shared_prefix": shared_prefix},
        "data": {"train_file": "x.jsonl"},
    })


def test_a_shared_prefix_plan_counts_computed_positions_and_checkpoints_fewer_layers():
    whole = plan_training(_config(False), PHI4_MINI, CARD, dtype_bytes=2, nf4_available=True, sharing=SHARING)
    shared = plan_training(_config(True), PHI4_MINI, CARD, dtype_bytes=2, nf4_available=True, sharing=SHARING)
    positions = SHARING.bin_positions(16 * 512)
    assert whole.chosen.settings.tokens_per_micro_batch == 8192 and whole.chosen.settings.keys_per_token == 1.0
    assert shared.chosen.settings.tokens_per_micro_batch == positions < 0.85 * 8192  # the fullest bin of long examples
    assert shared.chosen.settings.keys_per_token == 8192 / positions  # every real token's key is gathered once
    assert shared.checkpointed_layers < whole.checkpointed_layers
    assert shared.chosen.estimate.peak_on_gpu() <= CARD
    # the same plan's memory with the row counted whole would not fit: sharing is what frees it
    unshared = estimate_peak_memory(ModelShape.from_config(PHI4_MINI), replace(
        shared.chosen.settings, tokens_per_micro_batch=8192, keys_per_token=1.0))
    assert unshared.peak_on_gpu() > CARD, unshared.peak_on_gpu() / GIB


def test_without_the_data_or_without_sharing_the_row_is_counted_whole():
    for config, sharing in ((_config(True), None), (_config(False), SHARING)):
        plan = plan_training(config, PHI4_MINI, CARD, dtype_bytes=2, nf4_available=True, sharing=sharing)
        assert plan.chosen.settings.tokens_per_micro_batch == 8192


def test_an_out_of_memory_replan_counts_the_shared_rows_too():
    from lorakit.plan.config_view import train_settings
    from lorakit.plan.oom import MemorySettings, replan_for_memory

    shape = ModelShape.from_config(PHI4_MINI)
    base = train_settings(_config(True), "nf4", dtype_bytes=2, cuda=True)
    # a micro-batch of 16 rows with no layer checkpointed ran out of memory on the 8 GB card
    chosen = replan_for_memory(shape, base, MemorySettings(16, 0, False), max_length=512, memory_bytes=CARD,
                               bin_positions=SHARING.bin_positions)
    assert chosen is not None and chosen.fits and chosen.micro_batch == 16
    assert chosen.settings.tokens_per_micro_batch == SHARING.bin_positions(8192)
    whole = replan_for_memory(shape, base, MemorySettings(16, 0, False), max_length=512, memory_bytes=CARD)
    assert chosen.settings.checkpointed_layers < whole.settings.checkpointed_layers
