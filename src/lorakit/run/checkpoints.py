"""Atomic, verifiable checkpoints and exact resume.

A checkpoint folder holds the adapter (safetensors), optimizer/scheduler state, RNG states, the data
position, early-stopping state, the resolved config, and a manifest with the sha256 of every file. It is
staged and renamed into place, so a crash mid-save leaves the previous checkpoint as the latest good one.
Tensors and optimizer state are serialised in memory and written as bytes, so a full disk surfaces as
ENOSPC (DiskFullError) rather than torch's "file write failed"; state is read back with
`torch.load(weights_only=True)`, which refuses pickled code. Putting the state read back into a (possibly
sharded) model and optimizer is training's part (training/run_dir.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from lorakit.errors import CheckpointError, DiskFullError
from lorakit.run.layout import (
    ADAPTER_WEIGHTS,
    CHECKPOINT_MANIFEST,
    CHECKPOINTS,
    CONFIG,
    OPTIMIZER,
    RNG,
    SCALER,
    SCHEDULER,
    TRAINER_STATE,
)
from lorakit.runtime.atomic_files import atomic_directory, remove_abandoned_staging, remove_directory
from lorakit.runtime.logging import get_logger

__all__ = [
    "TrainerState",
    "checkpoint_dir",
    "save_checkpoint",
    "best_checkpoint_step",
    "list_checkpoints",
    "SavedCheckpoint",
    "read_adapter_weights",
    "read_checkpoint",
    "restore_rng",
    "verify_checkpoint",
    "latest_good_checkpoint",
    "read_identity",
    "read_environment",
    "sha256_file",
]

log = get_logger("training.checkpoint")

_NAME = re.compile(r"^step-(\d{8})$")


@dataclass
class TrainerState:
    """Everything besides tensors that a resumed run needs to continue exactly."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    early_stopping: dict = field(default_factory=dict)
    log_history: list[dict] = field(default_factory=list)
    micro_batch_size: int | None = None  # set after an out-of-memory retry cut it; None = as configured
    gradient_accumulation_steps: int | None = None  # micro-batches per optimizer step after such a retry
    checkpointed_layers: int | None = None  # set by an out-of-memory re-plan (plan/oom.py); None = as planned
    offload_activations: bool | None = None  # likewise
    window_loss: float = 0.0  # train-loss sum and step count since the last logged record, so a resumed
    window_steps: int = 0  # run logs the same averages as an uninterrupted one
    stopped_early: bool = False
    resumes: list[dict] = field(default_factory=list)  # each resume's changed settings/environment (resume_drift.py)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINTS / f"step-{step:08d}"


def _rng_tensors() -> dict[str, torch.Tensor]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{index}"] = state
    return tensors


def _python_numpy_rng() -> dict:
    version, internal, gauss = random.getstate()
    name, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), int(position), int(has_gauss), float(cached)],
    }


def _restore_rng(tensors: dict[str, torch.Tensor], states: dict) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), position, has_gauss, cached))


def _torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def save_checkpoint(
    run_dir: Path,
    *,
    model,
    optimizer: torch.optim.Optimizer,
    scheduler,
    scaler,
    state: TrainerState,
    identity: dict,
    config_yaml: str,
    keep: int,
    trainable=None,
    environment: dict | None = None,
) -> Path:
    """Write checkpoint `step-N` atomically, then delete all but the newest `keep` checkpoints and, while early
    stopping is on, the checkpoint of the best validation loss.

    `trainable`: the full LoRA weights and optimizer state gathered from a sharded model (training/sharding.py's
    TrainableState), written in place of `model`'s and `optimizer`'s own, in the same format.
    A full disk raises DiskFullError naming the previous checkpoint, which stays intact."""
    from lorakit.model.adapters import lora_state_dict

    weights = lora_state_dict(model, trainable.weights if trainable is not None else None)
    optimizer_state = trainable.optimizer if trainable is not None else optimizer.state_dict()
    target = checkpoint_dir(run_dir, state.step)
    remove_abandoned_staging(target.parent)
    previous = list_checkpoints(run_dir)
    try:
        with atomic_directory(target) as staging:
            (staging / ADAPTER_WEIGHTS).write_bytes(safetensors_bytes(weights))
            model.peft_config["default"].save_pretrained(staging)
            (staging / OPTIMIZER).write_bytes(_torch_bytes(optimizer_state))
            (staging / SCHEDULER).write_bytes(_torch_bytes(scheduler.state_dict()))
            if scaler is not None:
                (staging / SCALER).write_bytes(_torch_bytes(scaler.state_dict()))
            (staging / RNG).write_bytes(safetensors_bytes(_rng_tensors()))
            trainer_state = {"trainer": asdict(state), "rng": _python_numpy_rng(), "identity": identity,
                             "environment": environment}
            (staging / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=1))
            (staging / CONFIG).write_text(config_yaml)
            files = {p.name: sha256_file(p) for p in sorted(staging.iterdir()) if p.is_file()}
            (staging / CHECKPOINT_MANIFEST).write_text(json.dumps({"step": state.step, "files": files}, indent=1))
    except DiskFullError as exc:
        kept = f"The previous checkpoint {previous[-1].name} is intact" if previous else "No earlier checkpoint exists"
        raise DiskFullError(
            f"Could not save checkpoint {target.name}: {exc.message} {kept}.",
            hint="Free space (or move output_dir to a larger disk), then continue with `lorakit train CONFIG --resume`."
            if previous else exc.hint,
        ) from None
    # Read the new checkpoint back before pruning: an older one is deleted only once a newer one verifies.
    problem = verify_checkpoint(target)
    if problem is not None:
        raise CheckpointError(f"Checkpoint {target.name} does not read back as written ({problem}); the older "
                              "checkpoints are kept.", hint="Check the disk (dmesg, SMART), then continue with "
                              "`lorakit train CONFIG --resume`.")
    best = best_checkpoint_step(state)
    for old in list_checkpoints(run_dir)[:-keep]:
        if best is None or old != checkpoint_dir(run_dir, best):
            remove_directory(old)
    return target


def best_checkpoint_step(state: TrainerState) -> int | None:
    """The step whose checkpoint rotation keeps besides the newest ones: the best validation loss so far,
    while early stopping is on (final/ ships those weights when it fires), else None."""
    stopping = state.early_stopping
    if not stopping or stopping["patience"] is None or not stopping["best_step"]:
        return None
    return stopping["best_step"]


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Completed checkpoint folders, oldest first (staging folders start with a dot and are ignored)."""
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and _NAME.match(p.name))


def verify_checkpoint(path: Path) -> str | None:
    """None if every file matches its recorded sha256, else what is wrong."""
    manifest_path = path / CHECKPOINT_MANIFEST
    if not manifest_path.is_file():
        return "no checkpoint manifest"
    try:
        recorded = json.loads(manifest_path.read_text())["files"]
    except (ValueError, KeyError):
        return "unreadable checkpoint manifest"
    for name, digest in recorded.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if sha256_file(file) != digest:
            return f"{name} does not match its recorded sha256"
    return None


def latest_good_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint that verifies; corrupt newer ones are reported and skipped."""
    for path in reversed(list_checkpoints(run_dir)):
        problem = verify_checkpoint(path)
        if problem is None:
            return path
        log.warning("Checkpoint %s is damaged (%s); falling back to the previous one", path.name, problem)
    return None


def read_identity(path: Path) -> dict:
    """The run identity a checkpoint was saved with (checked before any tensor is loaded)."""
    return json.loads((path / TRAINER_STATE).read_text())["identity"]


def read_environment(path: Path) -> dict | None:
    """The library versions and GPU a checkpoint was saved with; None when it predates their recording."""
    return json.loads((path / TRAINER_STATE).read_text()).get("environment")


def _load_state(path: Path, **kwargs):
    """torch.load restricted to tensors and plain containers: a checkpoint cannot run code when resumed."""
    try:
        return torch.load(path, weights_only=True, **kwargs)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path} contains pickled objects other than tensors, which lorakit refuses to load ({exc}).",
            hint="The checkpoint was not written by lorakit or was tampered with; delete it to resume from an older one.",
        ) from None


def read_adapter_weights(path: Path) -> dict[str, torch.Tensor]:
    """A verified checkpoint's LoRA weights (bit-exact), for training/run_dir.py to put into a model."""
    problem = verify_checkpoint(path)
    if problem is not None:
        raise CheckpointError(f"Checkpoint {path} is damaged ({problem}).")
    return load_file(path / ADAPTER_WEIGHTS)


@dataclass
class SavedCheckpoint:
    """What a checkpoint holds, read back: training/run_dir.py puts it into the model, optimizer, scheduler and
    scaler (which may be sharded), then `restore_rng` restores the random number generators."""

    trainer: dict  # trainer_state.json: the trainer state, the Python and numpy RNG, identity, environment
    weights: dict[str, torch.Tensor]
    optimizer: dict
    scheduler: dict
    scaler: dict | None  # None when the checkpoint holds none (or the caller has no scaler)
    rng: dict[str, torch.Tensor]

    @property
    def state(self) -> TrainerState:
        return TrainerState(**self.trainer["trainer"])

    @property
    def identity(self) -> dict:
        return self.trainer["identity"]


def read_checkpoint(path: Path, device, *, with_scaler: bool) -> SavedCheckpoint:
    """Every state file of checkpoint `path`; optimizer tensors are mapped to `device`."""
    trainer = json.loads((path / TRAINER_STATE).read_text())
    weights = load_file(path / ADAPTER_WEIGHTS)
    optimizer_state = _load_state(path / OPTIMIZER, map_location=device)
    scheduler_state = _load_state(path / SCHEDULER)
    scaler_state = _load_state(path / SCALER) if with_scaler and (path / SCALER).is_file() else None
    return SavedCheckpoint(trainer, weights, optimizer_state, scheduler_state, scaler_state, load_file(path / RNG))


def restore_rng(saved: SavedCheckpoint) -> None:
    """Put the saved torch, CUDA, Python and numpy random states back (last, after all state is loaded)."""
    _restore_rng(saved.rng, saved.trainer["rng"])
