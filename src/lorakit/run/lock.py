"""One training process per output_dir: an advisory lock that the kernel releases when the holder dies.

Two runs writing checkpoints into the same folder would interleave and corrupt each other, and cleaning up
a killed run's staging folders is only safe when nobody else is writing. flock() is released on exit,
including kill -9, so a crashed run never leaves a stale lock behind; the lock file names the holder (pid and
what it does) while held and is emptied on release, so a killed holder is recognised and named by the next.
`lorakit export` takes the same lock on the run it reads (a train --overwrite must not delete final/ under it).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from lorakit.errors import CheckpointError
from lorakit.run.layout import LOCK_NAME
from lorakit.runtime.logging import get_logger

__all__ = ["hold_run_lock"]

# What the holder does, as the refusal of a second process says it: "is training in RUN".
_ACTIVITIES = {"training": "is training in", "exporting": "is exporting from"}

log = get_logger("runtime.run_lock")


@contextlib.contextmanager
def hold_run_lock(run_dir: Path, activity: str = "training") -> Iterator[None]:
    """Hold the lock on `run_dir` for the duration of the block, or raise CheckpointError if another process has it.

    The file holds "PID ACTIVITY" while held and is emptied on release, so a holder that was killed (the kernel
    released its lock, the file still names it) is recognised and named when the next process takes over."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid, holder_activity = _holder(fd)
            raise CheckpointError(
                f"Another lorakit process (pid {pid}) {_ACTIVITIES.get(holder_activity, 'is using')} {run_dir}.",
                hint="Wait for it to finish or stop it, or set another output_dir.",
            ) from None
        stale_pid, stale_activity = _holder(fd)
        if stale_activity is not None:  # (a lock file of an older lorakit holds a pid alone, released or not)
            log.warning("Took over the lock of %s from pid %s (%s), which ended without releasing it (killed or "
                        "crashed); its leftovers are cleaned up.", run_dir, stale_pid, stale_activity)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {activity}".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # released normally: nothing stale for the next holder to report
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _holder(fd: int) -> tuple[str, str | None]:
    """(pid, activity) written in the lock file; ("unknown", None) when it is empty."""
    words = os.pread(fd, 64, 0).decode(errors="replace").split()
    return (words[0], words[1] if len(words) > 1 else None) if words else ("unknown", None)
