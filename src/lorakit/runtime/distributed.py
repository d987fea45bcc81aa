"""Several processes, one run: the ranks torchrun or `accelerate launch` started, and the few collectives
the training loop needs (a sum, a barrier), each bounded by a timeout so a lost peer fails instead of hanging.

lorakit does not write a distributed runtime: the launcher starts one process per GPU (or several on a CPU)
and sets WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `process_group` joins them with gloo on
CPU or NCCL on CUDA. Without those variables (or with WORLD_SIZE=1) everything here is a no-op, so the
one-process path is the same code with `Ranks.world_size == 1`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch

from lorakit.errors import ConfigError
from lorakit.runtime.device import pick_device

__all__ = ["COLLECTIVE_TIMEOUT", "Ranks", "launch_ranks", "current_ranks", "process_group"]

# A collective that waits longer than this on a peer raises instead of hanging. Generous, because rank 0
# alone writes checkpoints and final/ while the others wait at the next collective.
COLLECTIVE_TIMEOUT = timedelta(minutes=30)
_LAUNCH_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run; with world_size 1 every collective returns its input."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device | None = None  # where collectives run (NCCL needs the rank's GPU); None: one process

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, final/, metrics, logs and progress; the others only compute."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def share(self, items: Sequence) -> list:
        """This rank's items of a list every rank holds: items rank, rank + N, ... (round-robin).

        >>> Ranks(1, 3).share(list("abcdefg"))
        ['b', 'e']
        """
        return list(items[self.rank :: self.world_size])

    def share_in_lockstep(self, items: Sequence) -> list[tuple[bool, object]]:
        """This rank's share as (real, item), padded with (False, items[0]) so that every rank gets the same number:
        under fsdp every pass is a collective (weight gathers), and a padding pass keeps the ranks in step while
        contributing nothing.

        >>> Ranks(1, 2).share_in_lockstep(list("abc"))
        [(True, 'b'), (False, 'a')]
        >>> Ranks(0, 2).share_in_lockstep(list("abc"))
        [(True, 'a'), (True, 'c')]
        """
        mine = [(True, item) for item in self.share(items)]
        passes = -(-len(items) // self.world_size)
        return mine + [(False, items[0]) for _ in range(passes - len(mine))]

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum of `values` over all ranks (float64), identical on every rank."""
        if not self.distributed:
            return list(values)
        tensor = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        return tensor.tolist()

    def sum_gradients_(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Replace each parameter's gradient by its sum over all ranks, through one flat buffer per dtype
        (LoRA gradients are small). A rank that had no micro-batch this step contributes zeros."""
        if not self.distributed:
            return
        for dtype in sorted({p.dtype for p in params}, key=str):
            group = [p for p in params if p.dtype == dtype]
            flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in group])
            torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
            offset = 0
            for p in group:
                p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
                offset += p.numel()

    def agree(self, values: Sequence[int | float], *, op: str) -> list[float]:
        """The element-wise 'min' or 'max' over all ranks (for decisions every rank must take alike)."""
        if not self.distributed:
            return [float(v) for v in values]
        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(tensor, op={"min": torch.distributed.ReduceOp.MIN,
                                                 "max": torch.distributed.ReduceOp.MAX}[op])
        return tensor.tolist()

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier(**({"device_ids": [self.local_rank]} if self.device.type == "cuda" else {}))


def launch_ranks(environ: dict | None = None) -> Ranks:
    """The ranks a launcher set in the environment (torchrun and `accelerate launch` set the same variables);
    Ranks() when none is set. A partial or inconsistent set is a ConfigError naming the variables.

    >>> launch_ranks({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"})
    Ranks(rank=1, world_size=2, local_rank=1, device=None)
    >>> launch_ranks({}).world_size
    1
    """
    environ = os.environ if environ is None else environ
    present = [name for name in _LAUNCH_VARIABLES if name in environ]
    if not present:
        return Ranks()
    problems = [f"{name} is not set (the launcher sets {', '.join(_LAUNCH_VARIABLES)} together)"
                for name in _LAUNCH_VARIABLES if name not in environ]
    values = {}
    for name in present:
        try:
            values[name] = int(environ[name])
        except ValueError:
            problems.append(f"{name}={environ[name]!r} is not a whole number")
    if not problems and not 0 <= values["RANK"] < values["WORLD_SIZE"]:
        problems.append(f"RANK={values['RANK']} is outside 0..WORLD_SIZE-1 (WORLD_SIZE={values['WORLD_SIZE']})")
    if problems:
        raise ConfigError("environment", [f"launcher environment: {p}" for p in problems])
    return Ranks(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"])


def current_ranks() -> Ranks:
    """The ranks of the process group `process_group` joined, or Ranks() when none is active."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return Ranks()
    launched = launch_ranks()
    return Ranks(torch.distributed.get_rank(), torch.distributed.get_world_size(), launched.local_rank,
                 _rank_device(launched.local_rank))


def _rank_device(local_rank: int) -> torch.device:
    device = pick_device()
    return torch.device("cuda", local_rank) if device.type == "cuda" else device


@contextlib.contextmanager
def process_group() -> Iterator[Ranks]:
    """Join the launcher's process group for the block (gloo on CPU, NCCL on CUDA, COLLECTIVE_TIMEOUT on
    every collective); one process without launcher variables yields Ranks() and joins nothing."""
    launched = launch_ranks()
    if not launched.distributed or torch.distributed.is_initialized():
        yield current_ranks() if torch.distributed.is_initialized() else launched
        return
    device = _rank_device(launched.local_rank)
    if device.type == "cuda":
        if launched.local_rank >= torch.cuda.device_count():
            raise ConfigError("environment", [f"launcher environment: LOCAL_RANK={launched.local_rank} but this "
                                              f"machine has {torch.cuda.device_count()} GPU(s); start at most that "
                                              "many processes per node (--nproc-per-node)"])
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT,
                                         **({"device_id": device} if device.type == "cuda" else {}))
    try:
        yield current_ranks()
    finally:
        torch.distributed.destroy_process_group()
