"""Crash-safe writes: write to a temporary sibling, fsync, then rename over the target.

A reader (or a resumed run) therefore sees either the old complete file/folder or the new complete one,
never a half-written one, even after kill -9 or power loss. A write that fails because the disk is full
raises DiskFullError and leaves the target untouched.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

from lorakit.errors import DiskFullError
from lorakit.runtime.logging import get_logger

__all__ = [
    "fsync_directory",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_directory",
    "remove_abandoned_staging",
    "remove_directory",
    "is_disk_full",
]

log = get_logger("runtime.atomic_files")

_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
# Writers that are not plain Python file I/O report a full disk in their own words: safetensors (Rust)
# says "No space left on device (os error 28)"; torch.save only says "file write failed" or
# "unexpected pos", which is why checkpoint.py serialises to memory and writes the bytes itself.
_DISK_FULL_TEXT = re.compile(r"No space left on device|Disk quota exceeded|File too large|os error (28|122|27)\b")
_STAGING = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old|del)-[0-9a-f]{8}$")


def is_disk_full(exc: BaseException) -> bool:
    """True for an OSError with ENOSPC/EDQUOT/EFBIG, or a library error whose text says the same."""
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS:
        return True
    return bool(_DISK_FULL_TEXT.search(str(exc)))


def _disk_full_error(target: Path, exc: BaseException) -> DiskFullError:
    free = shutil.disk_usage(target.parent).free
    return DiskFullError(
        f"The disk is full: writing {target} failed ({exc}; {free / 2**20:.1f} MiB free on that filesystem). "
        "Nothing was replaced: the previous version, if any, is intact.",
        hint=f"Free some space on the filesystem holding {target.parent} (or point output_dir at another disk), "
        "then run the command again.",
    )


def fsync_directory(path: Path) -> None:
    """Persist a directory's entries (renames, new files) on POSIX filesystems."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _staging_name(target: Path, kind: str) -> Path:
    return target.with_name(f".{target.name}.{kind}-{uuid.uuid4().hex[:8]}")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = _staging_name(target, "tmp")
    try:
        with open(staging, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(staging, target)
        fsync_directory(target.parent)
    except BaseException as exc:
        staging.unlink(missing_ok=True)
        if isinstance(exc, Exception) and is_disk_full(exc):
            raise _disk_full_error(target, exc) from None
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))




_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(first: Path, second: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux renameat2); False where the OS or filesystem can't."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE)
    return result == 0


def _replace_directory(staging: Path, target: Path) -> None:
    """Put the finished `staging` folder at `target`, so that `target` never stops existing if it did."""
    if not target.exists():
        os.replace(staging, target)
        return
    if _exchange(staging, target):
        shutil.rmtree(staging, ignore_errors=True)  # it now holds the old version
        return
    # Two renames: a crash between them leaves only `.name.old-*`, which remove_abandoned_staging restores.
    retired = _staging_name(target, "old")
    os.replace(target, retired)
    os.replace(staging, target)
    shutil.rmtree(retired, ignore_errors=True)


def current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (/proc), else set-and-restored."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _finish_tree(root: Path) -> None:
    """Every file on disk (fsynced) and as readable as the umask allows, as a plain open() makes it: safetensors
    (0.8) writes its file private (0600) and renames it into place, so an adapter or merged model could not be
    read by the tool or container user meant to run it. Then the folders, deepest first."""
    allowed = 0o666 & ~current_umask()
    paths = sorted(root.rglob("*"))
    for path in paths:
        if path.is_file() and not path.is_symlink():
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode | allowed != mode:
                os.chmod(path, mode | allowed)
            with open(path, "rb+") as handle:
                os.fsync(handle.fileno())
    for path in sorted([p for p in paths if p.is_dir()] + [root], reverse=True):
        fsync_directory(path)


@contextlib.contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield a staging folder; on success it replaces `target` whole (files as readable as the umask allows), on
    any error it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = _staging_name(target, "tmp")
    staging.mkdir()
    try:
        yield staging
        _finish_tree(staging)
        _replace_directory(staging, target)
        fsync_directory(target.parent)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, Exception) and is_disk_full(exc):
            raise _disk_full_error(target, exc) from None
        raise


def remove_directory(path: Path) -> None:
    """Delete a folder so that it disappears whole: renamed away first (atomic), then deleted. A crash
    mid-delete leaves `.name.del-*`, never a half-deleted folder under its real name."""
    doomed = _staging_name(path, "del")
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def remove_abandoned_staging(directory: Path, name: str | None = None) -> list[str]:
    """Delete leftovers of writers killed mid-write or mid-delete (`.name.tmp-*`, `.name.del-*`); restore
    `.name.old-*` whose replacement never arrived. Call only while holding the run lock, or with `name`: then
    only the leftovers of writers of `directory / name` go (a folder shared with others). Returns what was
    cleaned."""
    if not directory.is_dir():
        return []
    cleaned = []
    for path in sorted(directory.iterdir()):
        match = _STAGING.match(path.name)
        if match is None or (name is not None and match["name"] != name):
            continue
        original = directory / match["name"]
        if match["kind"] == "old" and not original.exists():
            os.replace(path, original)
            cleaned.append(f"restored {original.name}")
            continue
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        cleaned.append(f"removed {path.name}")
    if cleaned:
        log.warning("Cleaned up after an interrupted write in %s: %s", directory, ", ".join(cleaned))
    return cleaned
