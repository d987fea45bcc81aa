"""Resuming a run from its checkpoints: the newest intact one is loaded into the session (weights, optimizer,
scheduler, scaler, RNG; sharded under fsdp), after its identity and settings are compared with this run's."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lorakit.errors import CheckpointError
from lorakit.run.checkpoints import (
    TrainerState,
    latest_good_checkpoint,
    list_checkpoints,
    read_adapter_weights,
    read_checkpoint,
    read_environment,
    read_identity,
    restore_rng,
    verify_checkpoint,
)
from lorakit.run.folder import finished_steps
from lorakit.run.layout import FINAL
from lorakit.runtime.logging import get_logger
from lorakit.training.resume_drift import (
    as_micro_batch,
    check_same_run,
    current_environment,
    environment_changes,
    flat_settings,
    read_saved_settings,
    same_micro_batches,
    settings_drift,
    unrecorded_layout_settings,
)

if TYPE_CHECKING:
    from lorakit.training.session import TrainingSession

__all__ = ["finished_error", "load_adapter_weights", "load_checkpoint", "resume_state"]

log = get_logger("training.run_dir")


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
    saved, identity = _as_planned_now(read_saved_settings(checkpoint), read_identity(checkpoint), session)
    drift = settings_drift(saved, flat_settings(session.config.model_dump(mode="json")),
                           refuse=unrecorded_layout_settings(identity, saved))
    check_same_run(identity, session.identity,
                   [(change.key, text) for change, text in zip(drift.refused, drift.refused_details())])
    state, _ = load_checkpoint(checkpoint, model=session.model, optimizer=optimizer, scheduler=scheduler, scaler=scaler)
    if finished is not None and (state.stopped_early or state.step >= session.config.training.max_steps):
        raise finished_error(run_dir, finished)
    _record_drift(state, checkpoint, drift, environment_changes(read_environment(checkpoint),
                                                                current_environment(session.device)))
    stopper.load_state_dict(state.early_stopping) if state.early_stopping else None
    reporter.message(f"resumed from {checkpoint.name} (step {state.step})")
    return state


def _as_planned_now(saved: dict, identity: dict, session: TrainingSession) -> tuple[dict, dict]:
    """The checkpoint's settings and identity, with its micro-batch read as this run's where both take every row the
    training data fills (a checkpoint planned before an `auto` micro-batch was capped at those rows): the micro-batches
    are the same, so the resume is not refused for it."""
    config = session.config
    if identity.get("batch_size") == config.training.batch_size:  # the usual resume: nothing to reconcile
        return saved, identity
    rows = session.data.rows_to_fill(packing=config.training.packing, max_length=config.model.max_length)
    if not same_micro_batches(identity.get("batch_size"), config.training.batch_size, rows):
        return saved, identity
    log.info("the checkpoint's micro-batch %s and this run's %s both take all %s rows of the training data: "
             "the same micro-batches", identity["batch_size"], config.training.batch_size, rows)
    return as_micro_batch(saved, identity, config.training.batch_size)


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


def load_adapter_weights(path: Path, model) -> None:
    """Put a verified checkpoint's LoRA weights into `model` (bit-exact); optimizer and RNG are left alone."""
    from peft import set_peft_model_state_dict

    from lorakit.training.sharding import is_sharded, load_trainable_state

    weights = read_adapter_weights(path)
    if is_sharded(model):  # every rank passes the full weights and keeps its shard (a collective)
        load_trainable_state(model, None, weights, None)
    else:
        set_peft_model_state_dict(model, weights)


def load_checkpoint(path: Path, *, model, optimizer, scheduler, scaler) -> tuple[TrainerState, dict]:
    """Restore weights, optimizer, scheduler, scaler and RNG in place; returns the trainer state and identity."""
    from peft import set_peft_model_state_dict

    from lorakit.training.sharding import is_sharded, load_trainable_state

    device = next(p.device for p in model.parameters() if p.requires_grad)
    saved = read_checkpoint(path, device, with_scaler=scaler is not None)
    if is_sharded(model):  # FSDP: every rank reads the full states and keeps its shard (a collective)
        load_trainable_state(model, optimizer, saved.weights, saved.optimizer)
    else:
        set_peft_model_state_dict(model, saved.weights)
        optimizer.load_state_dict(saved.optimizer)
    scheduler.load_state_dict(saved.scheduler)
    if saved.scaler is not None:
        scaler.load_state_dict(saved.scaler)
    restore_rng(saved)
    return saved.state, saved.identity
