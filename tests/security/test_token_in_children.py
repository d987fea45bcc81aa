"""Issue 22, fault matrix row 9: the processes lorakit starts (torchrun for `train --gpus`, the studio's jobs)
never get the HF token on their command line (readable by every user in /proc/PID/cmdline); they inherit the
environment, where huggingface_hub reads it, as the parent does."""

from __future__ import annotations

import subprocess

import pytest

from lorakit.cli.app import run_cli

TOKEN = "hf_LorakitChildCanary5Rt81KqW3zY0pX6nJ"


class Started(Exception):
    """Raised by the recording Popen instead of starting anything."""


@pytest.fixture
def started(monkeypatch):
    """The (argv, env) of every process lorakit starts, recorded instead of started."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    calls = []

    def record(command, *args, env=None, **kwargs):
        calls.append((list(command), env))
        raise Started

    monkeypatch.setattr(subprocess, "Popen", record)
    return calls


def test_train_on_several_gpus_passes_no_token_to_torchrun(started, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("data: {train_file: qa.jsonl}\n")
    with pytest.raises(Started):
        run_cli(["train", str(config), "--gpus", "2", "--set", "training.max_steps=2"])
    (argv, env), = started
    assert argv[-4:] == ["train", str(config), "--set", "training.max_steps=2"] and "torch.distributed.run" in argv
    assert not any(TOKEN in word for word in argv) and env is None  # env None: the parent's, token included


@pytest.mark.parametrize("job", ["train", "export"])
def test_studio_jobs_pass_no_token_on_the_command_line(started, tmp_path, job):
    from lorakit.studio.jobs import start_job

    run = tmp_path / "run"
    run.mkdir()
    args = ["push", str(run), "--repo-id", "me/model"] if job == "export" else ["train", str(run / "studio.yaml")]
    with pytest.raises(Started):
        start_job(run, job, args)
    (argv, env), = started
    assert argv[-len(args):] == args and not any(TOKEN in word for word in argv)
    assert env["HF_TOKEN"] == TOKEN  # inherited, as huggingface_hub in the child needs it to download or push
