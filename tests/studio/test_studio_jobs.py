"""Background jobs: their state is read from the run folder alone, errors are the CLI's own lines."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import free_port

from lorakit.errors import LorakitError
from lorakit.export.run_export import ExportRequest, export_run
from lorakit.studio import jobs
from lorakit.studio.jobs import exit_file, job_status, log_file, start_job, stop_job


def _wait(run_dir, job, timeout_s=120.0):
    deadline = time.monotonic() + timeout_s
    while (status := job_status(run_dir, job)).state == "running":
        assert time.monotonic() < deadline, status.log_tail
        time.sleep(0.2)
    return status


def _running(pid: int) -> bool:
    try:
        return not Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z")
    except FileNotFoundError:
        return False


def _forget_children(monkeypatch):
    """As a restarted studio: no process handles, only the run folder."""
    monkeypatch.setattr(jobs, "_children", {})


def test_a_failed_job_shows_the_cli_error_and_hint_word_for_word(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    assert job_status(run_dir, "export").state == "none"
    start_job(run_dir, "export", ["export", str(run_dir), "--format", "merged"])
    status = _wait(run_dir, "export")
    with pytest.raises(LorakitError) as direct:
        export_run(run_dir, ExportRequest("merged"))
    assert (status.state, status.exit_code) == ("failed", direct.value.exit_code)
    assert (status.error, status.hint) == (direct.value.message, direct.value.hint)
    assert log_file(run_dir, "export").read_text().startswith(f"$ lorakit export {run_dir} --format merged\n")
    _forget_children(monkeypatch)
    assert job_status(run_dir, "export") == status


def test_a_running_job_is_not_started_twice_and_one_killed_without_an_exit_code_died(tmp_path, monkeypatch):
    """(Stopping with Ctrl-C, and resuming, are tested on a real training run in test_studio_browser.py.)"""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    # A command that runs until it is interrupted: the studio itself, as a job.
    started = start_job(run_dir, "train", ["studio", "--port", str(free_port()), "--workdir", str(tmp_path / "w")])
    assert started.state == "running" and started.pid > 0
    with pytest.raises(LorakitError, match=r"^The train job of run is already running \(pid \d+\)\.\nWait for it to finish, or stop it first\.$"):
        start_job(run_dir, "train", ["doctor"])
    children = Path(f"/proc/{started.pid}/task/{started.pid}/children")
    deadline = time.monotonic() + 60
    while sys.platform == "linux" and not children.read_text().split():  # the CLI, started by the runner
        assert time.monotonic() < deadline
        time.sleep(0.1)
    command = [int(pid) for pid in children.read_text().split()] if sys.platform == "linux" else []
    os.kill(started.pid, signal.SIGKILL)
    jobs._children[started.pid].wait(10)
    for pid in command:  # on Linux the command dies with its runner: a job that reads "died" is not still running
        while _running(pid):
            assert time.monotonic() < deadline, f"the command (pid {pid}) outlived its killed runner"
            time.sleep(0.1)
    _forget_children(monkeypatch)
    status = job_status(run_dir, "train")
    assert (status.state, status.exit_code, status.error) == ("died", None, None)
    assert not exit_file(run_dir, "train").exists()
    with pytest.raises(LorakitError, match="is not running"):
        stop_job(run_dir, "train")


def test_a_job_stops_even_when_the_studio_was_started_with_sigint_ignored(tmp_path, tiny_llama_dir):
    """`lorakit studio &` in a script starts the studio with SIGINT ignored, and children inherit that: the stop
    button (a SIGINT) must still end a training job with the CLI's interrupted exit code."""
    from conftest import write_config_file

    config = write_config_file(tmp_path, tiny_llama_dir, seed=0, training={
        "max_steps": 100000, "batch_size": 2, "logging_steps": 1, "eval_steps": 100000, "save_steps": 100000})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        start_job(run_dir, "train", ["train", str(config)])
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        deadline = time.monotonic() + 120
        while "step " not in (status := job_status(run_dir, "train")).log_tail:  # training, not still importing
            assert status.state == "running" and time.monotonic() < deadline, status.log_tail
            time.sleep(0.2)
        status = stop_job(run_dir, "train", timeout_s=60)
        assert (status.state, status.exit_code) == ("stopped", 130), status.log_tail
    finally:
        if job_status(run_dir, "train").state == "running":  # never leave a 100,000-step job behind
            os.killpg(status.pid, signal.SIGKILL)


def test_stop_repeats_the_interrupt_until_the_job_ends(tmp_path, monkeypatch):
    """A job that did not stop on the first SIGINT gets another every SIGINT_REPEAT_S (5 s), until it ends or the
    timeout passes (as a user presses Ctrl-C again). The clock is a fake one that only sleeping advances."""
    sent, clock = [], [0.0]
    monkeypatch.setattr(jobs.os, "killpg", lambda pid, sig: sent.append((pid, sig)))
    monkeypatch.setattr(jobs, "time", SimpleNamespace(monotonic=lambda: clock[0],
                                                      sleep=lambda seconds: clock.__setitem__(0, clock[0] + seconds)))

    def status(run_dir, job):  # running until the second interrupt
        state, code = ("stopped", 130) if len(sent) >= 2 else ("running", None)
        return jobs.JobStatus(job, state, 4242, code, 0.0, "", None, None)

    monkeypatch.setattr(jobs, "job_status", status)
    result = jobs.stop_job(tmp_path, "train", timeout_s=60)
    assert (result.state, result.exit_code) == ("stopped", 130)
    assert sent == [(4242, signal.SIGINT), (4242, signal.SIGINT)] and 5.0 <= clock[0] < 5.2
    sent.clear()
    clock[0] = 0.0
    monkeypatch.setattr(jobs, "job_status", lambda run_dir, job: jobs.JobStatus(job, "running", 7, None, 0.0, "",
                                                                                None, None))
    assert jobs.stop_job(tmp_path, "train", timeout_s=12).state == "running"  # gives up at the timeout
    assert sent == [(7, signal.SIGINT)] * 3 and 12.0 <= clock[0] < 12.2  # at 0, 5 and 10 s
