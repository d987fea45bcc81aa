"""The run folder as training opens it: creating it, refusing to clobber a previous run, the disk space its
checkpoints need, undoing a folder a failed run created, and whether the run finished."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

from lorakit.errors import CheckpointError, ConfigError, DiskFullError
from lorakit.run.checkpoints import list_checkpoints
from lorakit.run.layout import CHECKPOINTS, EXPORT, FINAL, LOCK_NAME, TRAINING_OUTPUTS, finished_manifest
from lorakit.runtime.atomic_files import remove_abandoned_staging, remove_directory

__all__ = ["check_space_for_checkpoints", "create_output_dir", "finished_steps", "first_missing_folder",
           "prepare_run_dir", "remove_unused_run_dir"]


def prepare_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to train over an existing run unless resuming or overwriting; clear it when overwriting."""
    # Leftovers of a run killed mid-write go first; a run killed before its first checkpoint holds nothing.
    remove_abandoned_staging(run_dir)
    remove_abandoned_staging(run_dir / CHECKPOINTS)
    remove_abandoned_staging(run_dir / EXPORT)  # a killed export's staging folder (exports take this lock too)
    holds_run = bool(list_checkpoints(run_dir)) or (run_dir / FINAL).exists()
    if holds_run and not resume and not overwrite:
        raise CheckpointError(
            f"{run_dir} already holds a training run.",
            hint="Pass --resume to continue it, --overwrite to start again from scratch, or set another output_dir.",
        )
    if overwrite and not resume:
        # export/ too: exports of the old adapter must not sit beside the new one's final/.
        for name in TRAINING_OUTPUTS:
            target = run_dir / name
            remove_directory(target) if target.is_dir() else target.unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)


def check_space_for_checkpoints(run_dir: Path, trainable_bytes: int, keep: int, keeps_best: bool) -> None:
    """Refuse to start when the disk cannot hold the checkpoints the run will keep (at least), instead of failing
    at the first save after minutes or hours of training.

    A checkpoint holds the LoRA weights and Adam's two moments (3x the trainable bytes, plus small state); `keep`
    of them stay, one more is staged before the oldest is pruned (and the best one while early stopping is on),
    then final/ holds the weights once more. Checkpoints already on disk count toward that."""
    checkpoint_bytes = 3 * trainable_bytes + (256 << 10)  # + RNG, scheduler, trainer state, config
    needed = (keep + 1 + int(keeps_best)) * checkpoint_bytes + trainable_bytes  # a floor: final/'s tokenizer comes on top
    existing = sum(p.stat().st_size for c in list_checkpoints(run_dir) for p in c.iterdir() if p.is_file())
    needed = max(needed - existing, 0)
    free = shutil.disk_usage(run_dir).free
    if free < needed:
        raise DiskFullError(
            f"Not enough free disk space for {keep} checkpoints and the final adapter in {run_dir}: they need about "
            f"{needed / 2**20:.1f} MiB and {free / 2**20:.1f} MiB are free. Nothing was trained.",
            hint="Free some space, lower training.save_total_limit, or set output_dir on a larger disk.")


def create_output_dir(run_dir: Path) -> Path:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file in the way, a read-only or missing mount, a name too long, no permission
        reason = "a file of that name is in the way" if exc.errno == errno.EEXIST else exc.strerror
        raise ConfigError("output_dir", [f"output_dir: cannot create the folder {run_dir} ({reason})"]) from None
    return run_dir


def first_missing_folder(run_dir: Path) -> Path | None:
    """The outermost folder of `run_dir` that does not exist yet (what creating it will create), or None."""
    missing = None
    for folder in (run_dir, *run_dir.parents):
        try:
            if folder.exists():
                return missing
        except OSError:  # a name too long to look up: creating it fails next, as a config error
            return None
        missing = folder
    return missing


def remove_unused_run_dir(run_dir: Path, created: Path | None) -> None:
    """Undo `create_output_dir` for a run that failed before writing anything: remove `run_dir` when it holds
    nothing but the run lock, and the empty folders above it up to `created` (what this run created)."""
    if created is None or not run_dir.is_dir() or any(p.name != LOCK_NAME for p in run_dir.iterdir()):
        return
    (run_dir / LOCK_NAME).unlink(missing_ok=True)
    for folder in (run_dir, *run_dir.parents):
        try:
            folder.rmdir()
        except OSError:  # not empty (another run appeared) or already gone
            return
        if folder == created:
            return


def finished_steps(run_dir: Path) -> int | None:
    manifest = finished_manifest(run_dir)
    return json.loads(manifest.read_text())["metrics"]["steps"] if manifest.is_file() else None
