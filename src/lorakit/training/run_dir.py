"""The run directory: creating it, refusing to clobber a previous run, and resuming from its checkpoints."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from lorakit.errors import CheckpointError, ConfigError, DiskFullError
from lorakit.runtime.atomic_files import remove_abandoned_staging, remove_directory
from lorakit.runtime.logging import get_logger
from lorakit.training.checkpoint import (
    CHECKPOINTS,
    TrainerState,
    latest_good_checkpoint,
    list_checkpoints,
    load_checkpoint,
    read_environment,
    read_identity,
    verify_checkpoint,
)
from lorakit.training.resume_drift import (
    check_same_run,
    current_environment,
    environment_changes,
    flat_settings,
    read_saved_settings,
    settings_drift,
)

if TYPE_CHECKING:
    from lorakit.training.session import TrainingSession

__all__ = ["FINAL", "check_space_for_checkpoints", "create_output_dir", "first_missing_folder", "remove_unused_run_dir", "prepare_run_dir",
           "finished_steps", "finished_error", "resume_state"]

FINAL = "final"  # the finished adapter; its presence marks the run finished
EXPORT = "export"  # `lorakit export`'s default output folders (export/FORMAT)

log = get_logger("training.run_dir")


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
        for name in ("checkpoints", FINAL, EXPORT, "tensorboard", "metrics.jsonl", "manifest.json", "loss_curve.png"):
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
    from lorakit.runtime.run_lock import LOCK_NAME

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
    manifest = run_dir / FINAL / "manifest.json"
    return json.loads(manifest.read_text())["metrics"]["steps"] if manifest.is_file() else None


def resume_state(run_dir: Path, session: TrainingSession, optimizer, scheduler, scaler, stopper, reporter) -> TrainerState:
    """Restore the newest intact checkpoint into the session; refuse a changed or finished run."""
    checkpoint = latest_good_checkpoint(run_dir)  # damaged newer ones are reported and skipped
    finished = finished_steps(run_dir)
    if checkpoint is None:
        damaged = list_checkpoints(run_dir)
        if damaged:
            problems = "; ".join(f"{path.name}: {verify_checkpoint(path)}" for path in damaged)
            raise CheckpointError(f"No checkpoint in {run_dir} is intact ({problems}).",
                                  hint="Start again with --overwrite (or restore the checkpoints from a backup).")
        if finished is not None:
            raise finished_error(run_dir, finished)
        # Killed before its first checkpoint: step 0 is the last durable state, so resuming is starting.
        log.warning("%s holds no checkpoint yet; starting from step 0", run_dir)
        return TrainerState()
    # Compare identities and settings before loading tensors: a different LoRA shape would otherwise fail as a
    # size mismatch, and a changed learning rate would be overwritten by the checkpoint's scheduler.
    drift = settings_drift(read_saved_settings(checkpoint), flat_settings(session.config.model_dump(mode="json")))
    check_same_run(read_identity(checkpoint), session.identity,
                   [(change.key, text) for change, text in zip(drift.refused, drift.refused_details())])
    state, _ = load_checkpoint(checkpoint, model=session.model, optimizer=optimizer, scheduler=scheduler, scaler=scaler)
    if finished is not None and (state.stopped_early or state.step >= session.config.training.max_steps):
        raise finished_error(run_dir, finished)
    _record_drift(state, checkpoint, drift, environment_changes(read_environment(checkpoint),
                                                                current_environment(session.device)))
    stopper.load_state_dict(state.early_stopping) if state.early_stopping else None
    reporter.message(f"resumed from {checkpoint.name} (step {state.step})")
    return state


def _record_drift(state: TrainerState, checkpoint: Path, drift, environment: list) -> None:
    """Name the settings and environment that changed in a WARNING, and keep them in the trainer state (the
    manifest's `resumes` lists every resume that changed something)."""
    if drift.warning():
        log.warning(drift.warning())
    if environment:
        log.warning("Resuming on another environment than %s was saved with (%s): the continuation is not promised "
                    "to be bit-identical to an uninterrupted run.", checkpoint.name,
                    "; ".join(f"{c.key} {c.old} -> {c.new}" for c in environment))
    if drift.warned or environment:
        state.resumes.append({"step": state.step, "checkpoint": checkpoint.name,
                              "settings": {c.key: {"checkpoint": c.old, "now": c.new} for c in drift.warned},
                              "environment": {c.key: {"checkpoint": c.old, "now": c.new} for c in environment}})


def finished_error(run_dir: Path, steps: int) -> CheckpointError:
    return CheckpointError(
        f"The run in {run_dir} is already finished ({steps} steps); its adapter is in {run_dir / FINAL}.",
        hint="To train longer, raise training.max_steps and pass --resume again.",
    )
