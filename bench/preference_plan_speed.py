"""How long the DPO memory planner takes to bound a tiny data set over a long run, before and after session 12.

    python bench/preference_plan_speed.py [--pairs 20] [--steps 2000] [--accumulation 16] [--repeats 3]

The planner bounds the micro-batches the run really trains on (data/preference_batch.PairLayout with the run's
order, training/batches.run_pair_layout): every micro-batch size it tries (1 to 16 at max_length 512) over
max_steps x gradient_accumulation_steps micro-batches. "walked" is the epoch-by-epoch bound lorakit used until
session 12 (kept in tests/data/test_pair_layout_bound.py as the reference); "blocked" is today's. Both plan the
Phi-4-mini shape (config.json numbers only) on the same random pair sizes; the bounds must agree. CPU only.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "data"))
from test_pair_layout_bound import _walked_bound  # noqa: E402

from conftest import PHI4_MINI  # noqa: E402
from lorakit.config import RunConfig  # noqa: E402
from lorakit.data.preference_batch import PairLayout  # noqa: E402
from lorakit.plan.run_plan import plan_training  # noqa: E402
from lorakit.training.batches import run_pair_layout  # noqa: E402


def timed_plan(layout: PairLayout, config: RunConfig) -> tuple[float, dict]:
    start = time.perf_counter()
    plan = plan_training(config, PHI4_MINI, 80 * 2**30, dtype_bytes=2, nf4_available=True, pairs=layout)
    seconds = time.perf_counter() - start
    return seconds, {"micro_batch": plan.micro_batch, "bounds": sorted(layout._bounds.items())}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--accumulation", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = random.Random(0)
    positions = tuple(rng.randint(100, 500) for _ in range(args.pairs))
    pairs = PairLayout(positions, tuple(p + rng.randint(0, 100) for p in positions))
    config = RunConfig.model_validate({
        "model": {"quantization": "nf4", "max_length": 512}, "data": {"train_file": "x.jsonl"},
        "training": {"method": "dpo", "batch_size": "auto", "gradient_checkpointing": "auto",
                     "max_steps": args.steps, "gradient_accumulation_steps": args.accumulation}})
    timed_plan(pairs, config)  # imports and first-call costs out of the timings
    rows = []
    for bound in ("walked", "blocked"):
        for _ in range(args.repeats):
            layout = run_pair_layout(pairs, config)
            if bound == "walked":  # the reference, on this instance only
                object.__setattr__(layout, "_run_bound", lambda p, s, layout=layout: _walked_bound(layout, p, s))
            seconds, plan = timed_plan(layout, config)
            rows.append({"bound": bound, "seconds": round(seconds, 3), **plan})
    for row in rows:
        print(json.dumps(row))
    assert len({json.dumps(row["bounds"]) for row in rows}) == 1, "the two bounds disagree"


if __name__ == "__main__":
    main()
