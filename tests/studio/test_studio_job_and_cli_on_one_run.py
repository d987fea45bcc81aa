"""Issue 22, fault matrix row 2: a studio job and a command-line `lorakit` on the same run folder. The studio's
job is the CLI in a child process (studio/job_runner.py), so it takes the run's lock like any `lorakit train`;
the second of the two is refused with the lock error naming the first one's pid, and writes nothing."""

from __future__ import annotations

import os
import time

from conftest import write_config_file
from lorakit.run.lock import hold_run_lock
from lorakit.studio.jobs import job_status, start_job


def test_a_studio_train_job_on_a_run_the_cli_is_training_is_the_lock_error(tmp_path, tiny_llama_dir):
    config = write_config_file(tmp_path, tiny_llama_dir, seed=0, training={"max_steps": 2, "batch_size": 2})
    run_dir = tmp_path / "run"
    with hold_run_lock(run_dir, "training"):  # what `lorakit train CONFIG` in a terminal holds while it trains
        before = sorted(p.name for p in run_dir.iterdir())
        start_job(run_dir, "train", ["train", str(config)])
        deadline = time.monotonic() + 120
        while (status := job_status(run_dir, "train")).state == "running":
            assert time.monotonic() < deadline, status.log_tail
            time.sleep(0.1)
        after = sorted(p.name for p in run_dir.iterdir() if not p.name.startswith("studio-train."))
    assert (status.state, status.exit_code) == ("failed", 2), status.log_tail
    assert status.error == f"Another lorakit process (pid {os.getpid()}) is training in {run_dir}."
    assert status.hint == "Wait for it to finish or stop it, or set another output_dir."
    assert after == before  # the job wrote nothing into the run: no checkpoints/, no config, no metrics
