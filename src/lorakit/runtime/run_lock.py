"""One training process per output_dir: an advisory lock that the kernel releases when the holder dies.

Two runs writing checkpoints into the same folder would interleave and corrupt each other, and cleaning up
a killed run's staging folders is only safe when nobody else is writing. flock() is released on exit,
including kill -9, so a crashed run never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from lorakit.errors import CheckpointError

__all__ = ["LOCK_NAME", "hold_run_lock"]

LOCK_NAME = ".lorakit.lock"


@contextlib.contextmanager
def hold_run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the lock on `run_dir` for the duration of the block, or raise CheckpointError if another process has it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise CheckpointError(
                f"Another lorakit process (pid {holder}) is training in {run_dir}.",
                hint="Wait for it to finish or stop it, or set another output_dir.",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
