"""bench/lib/flops.py and bench/lib/peer_table.py (issue 23): utilisation counts the LM head where each tool runs it, the
old count puts it on every token, and executed FLOPs add exactly the recomputed work; the table reads lorakit's
plan line for its micro-batch and checkpointed layers."""

from __future__ import annotations

import doctest
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from lib import (
    flops,  # noqa: E402
    peer_table,  # noqa: E402
)
from lib.phi4_mini_run import PHI4_MINI  # noqa: E402


@pytest.mark.parametrize("module", [flops, peer_table])
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_phi4_mini_step_counts_the_head_on_labelled_positions_only():
    counts = flops.StepCounts(tokens=8192, labelled=4096, square_lengths=30 * 270**2)
    head = 200_064 * 3072
    assert flops.old_flops(PHI4_MINI, counts) - flops.model_flops(PHI4_MINI, counts) == 4 * head * 4096
    # TRL 1.16 recomputes the head's product in its backward; 32 checkpointed layers run their forward again
    recomputed = 2 * 3_221_225_472 * 8192 + 2 * 30 * 270**2 * 3072 * 32 + 2 * head * 4096
    executed = flops.executed_flops(PHI4_MINI, counts, checkpointed_layers=32, head_recomputed=True)
    assert executed - flops.model_flops(PHI4_MINI, counts) == recomputed
    mfu = flops.utilisation(flops.model_flops(PHI4_MINI, counts), 8192, 20_000.0, 780.0)
    assert mfu == pytest.approx(0.3659, abs=1e-4)  # 1.1692e14 FLOPs over 8,192 tokens at 20k tok/s, 780 TFLOP/s


def test_row_utilisation_sums_the_measured_steps():
    row = {"step_tokens": [8192, 7446], "step_labelled": [4000, 3000], "step_square_lengths": [2_000_000, 1_000_000],
           "tokens_per_second": 10_000.0, "checkpointed_layers": 0}
    use = peer_table.row_utilisation(row, PHI4_MINI, 800.0)
    counts = flops.StepCounts(15_638, 7_000, 3_000_000)
    assert use["mfu"] == flops.model_flops(PHI4_MINI, counts) / 15_638 * 10_000.0 / 800e12
    assert use["hfu"] == use["mfu"]  # nothing recomputed
    assert (use["tokens_per_step"], use["labelled_per_step"]) == (7_819, 3_500)


def test_shared_prefix_rows_count_the_positions_they_compute():
    """A lorakit row with shared prefixes: the linear layers' FLOPs on its computed positions, attention on the
    segments' squares as given; tokens/s (and so the FLOPs per real token) still over the real tokens."""
    row = {"step_tokens": [8192], "step_labelled": [4000], "step_square_lengths": [1_500_000], "step_positions": [5000],
           "tokens_per_second": 10_000.0, "checkpointed_layers": 0}
    use = peer_table.row_utilisation(row, PHI4_MINI, 800.0)
    performed = 4 * flops.linear_params(PHI4_MINI) * 5000 + flops.attention_flops(PHI4_MINI, 1_500_000) \
        + 4 * flops.head_params(PHI4_MINI) * 4000
    assert use["mfu"] == pytest.approx(performed / 8192 * 10_000.0 / 800e12, rel=1e-12)
    assert use["positions_per_step"] == 5000 and use["tokens_per_step"] == 8192
