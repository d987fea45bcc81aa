"""`lorakit train --gpus N`: start the same command under torchrun, one process per GPU (or N CPU processes
with gloo on a machine without CUDA), so nobody has to remember the launcher's flags."""

from __future__ import annotations

import sys

import torch

from lorakit.errors import ConfigError

__all__ = ["torchrun_command", "check_process_count"]


def torchrun_command(processes: int, lorakit_args: list[str]) -> list[str]:
    """The torchrun command line for `processes` workers on this machine, each running `lorakit ARGS`.

    --standalone picks a free rendezvous port on localhost, so two runs on one machine do not collide.

    >>> torchrun_command(2, ["train", "c.yaml"])[1:]
    ['-m', 'torch.distributed.run', '--standalone', '--nproc-per-node', '2', '-m', 'lorakit', 'train', 'c.yaml']
    """
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
            "-m", "lorakit", *lorakit_args]


def check_process_count(processes: int) -> None:
    """Refuse more processes than this machine has GPUs (on a CUDA machine); any count is allowed on CPU."""
    if torch.cuda.is_available() and processes > torch.cuda.device_count():
        raise ConfigError("--gpus", [f"--gpus {processes}: this machine has {torch.cuda.device_count()} GPU(s); "
                                     f"pass at most {torch.cuda.device_count()} (several machines: see "
                                     "docs/training.md, 'Several GPUs')"])
