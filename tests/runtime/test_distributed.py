"""Issue 12: launcher detection (torchrun and `accelerate launch` set the same variables), `--gpus N`, and the
one-process no-op collectives. The real 2-process runs are in tests/training/test_data_parallel.py."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from lorakit.cli.app import run_cli
from lorakit.errors import ConfigError
from lorakit.runtime.distributed import Ranks, launch_ranks
from lorakit.runtime.launch import torchrun_command

# What `accelerate launch --num_processes 2 -m lorakit ...` puts in the second worker's environment
# (accelerate starts workers through torch's elastic launcher), besides its own ACCELERATE_* keys.
ACCELERATE_RANK_1 = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "0",
                     "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "ACCELERATE_MIXED_PRECISION": "no",
                     "ACCELERATE_USE_CPU": "False"}


def test_launch_ranks_reads_torchrun_and_accelerate_variables():
    assert launch_ranks(ACCELERATE_RANK_1) == Ranks(rank=1, world_size=2, local_rank=1)
    assert not launch_ranks(ACCELERATE_RANK_1).is_main and launch_ranks(ACCELERATE_RANK_1).distributed
    assert launch_ranks({"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}).distributed is False
    assert launch_ranks({"PATH": "/bin"}) == Ranks()


def test_launch_ranks_refuses_a_partial_or_inconsistent_environment():
    with pytest.raises(ConfigError) as partial:
        launch_ranks({"WORLD_SIZE": "2", "RANK": "x"})
    assert partial.value.problems == [
        "launcher environment: LOCAL_RANK is not set (the launcher sets WORLD_SIZE, RANK, LOCAL_RANK together)",
        "launcher environment: RANK='x' is not a whole number"]
    with pytest.raises(ConfigError, match=r"RANK=2 is outside 0..WORLD_SIZE-1 \(WORLD_SIZE=2\)"):
        launch_ranks({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0"})


def test_one_process_collectives_return_their_input():
    ranks = Ranks()
    assert ranks.sum([1.5, 2]) == [1.5, 2] and ranks.agree([3, 4], op="min") == [3.0, 4.0]
    assert ranks.share(["a", "b", "c"]) == ["a", "b", "c"]
    assert Ranks(1, 2).share([0, 1, 2, 3, 4]) == [1, 3] and Ranks(0, 2).share([0, 1, 2, 3, 4]) == [0, 2, 4]
    param = torch.nn.Parameter(torch.ones(3))
    param.grad = torch.full((3,), 2.0)
    ranks.sum_gradients_([param])
    assert torch.equal(param.grad, torch.full((3,), 2.0))
    ranks.barrier()  # no process group: returns at once


def test_gpus_relaunches_the_same_command_under_torchrun(tmp_path, monkeypatch, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("output_dir: x\n")
    started = []

    class FakePopen:
        def __init__(self, command):
            started.append(command)

        def wait(self):
            return 3

    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code = run_cli(["train", str(config), "--gpus", "2", "--set", "training.max_steps=5", "--resume"])
    assert code == 3  # torchrun's exit code
    assert started == [[sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        "-m", "lorakit", "train", str(config), "--set", "training.max_steps=5", "--resume"]]
    assert started[0] == torchrun_command(2, started[0][8:])
    assert "starting 2 processes:" in capsys.readouterr().out


def test_gpus_refuses_more_processes_than_gpus(tmp_path, monkeypatch, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("output_dir: x\n")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("must not start torchrun"))
    assert run_cli(["train", str(config), "--gpus", "3"]) == 2
    err = capsys.readouterr().err
    assert "--gpus 3: this machine has 2 GPU(s); pass at most 2" in err
