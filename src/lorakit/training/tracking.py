"""Experiment tracking next to TensorBoard: MLflow or Weights & Biases, chosen by `training.tracker`.

Both get the same things: every logged metric with its step, the resolved config as parameters, and at the end
the run manifest, config and loss curve as artifacts. Never the training data, and never a token: the config
holds none, and values that look like one are masked anyway. The tracker's run id is kept in
OUTPUT_DIR/tracking.json, so `--resume` continues the same tracked run.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any, Protocol

import yaml

from lorakit.config import RunConfig, dump_config
from lorakit.errors import ConfigError, mask_tokens
from lorakit.run.layout import CONFIG, LOSS_CURVE, MANIFEST
from lorakit.runtime.atomic_files import atomic_write_text
from lorakit.runtime.logging import get_logger

__all__ = ["ExperimentTracker", "open_tracker", "tracked_params", "ARTIFACTS"]

log = get_logger("training.tracking")

ARTIFACTS = (MANIFEST, CONFIG, LOSS_CURVE)


class ExperimentTracker(Protocol):
    def log_metrics(self, step: int, metrics: dict[str, float]) -> None: ...
    def finish(self, run_dir: Path) -> None: ...


def tracked_params(config: RunConfig) -> dict[str, str]:
    """The resolved config flattened to `section.key -> text`, with anything token-shaped masked."""
    flat: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix.rstrip(".")] = mask_tokens(json.dumps(node) if not isinstance(node, str) else node)

    walk(yaml.safe_load(dump_config(config)), "")
    return flat


def _remembered_run_id(run_dir: Path, kind: str) -> str | None:
    path = run_dir / "tracking.json"
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    return saved.get("run_id") if saved.get("kind") == kind else None


def _remember_run_id(run_dir: Path, kind: str, run_id: str) -> None:
    atomic_write_text(run_dir / "tracking.json", json.dumps({"kind": kind, "run_id": run_id}) + "\n")


class MlflowTracker:
    """MLFLOW_TRACKING_URI when set, else a local SQLite store in OUTPUT_DIR/mlflow.db (works offline)."""

    def __init__(self, config: RunConfig, run_dir: Path, resume: bool):
        from mlflow import MlflowClient

        local = run_dir.resolve()
        tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{local / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=(local / "mlflow-registry").as_uri())
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "lorakit")
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(
            name, artifact_location=(local / "mlartifacts").as_uri())
        run_id = _remembered_run_id(run_dir, "mlflow") if resume else None
        if run_id is None:
            run_id = self.client.create_run(experiment_id, run_name=run_dir.name).info.run_id
            from mlflow.entities import Param

            params = [Param(key, value[:6000]) for key, value in tracked_params(config).items()]
            for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
                self.client.log_batch(run_id, params=params[start:start + 100])
            _remember_run_id(run_dir, "mlflow", run_id)
        self.run_id = run_id
        log.info("MLflow run %s at %s", run_id, tracking_uri)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(key, float(value), now, step) for key, value in metrics.items()])

    def finish(self, run_dir: Path) -> None:
        for name in ARTIFACTS:
            if (run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(run_dir / name))
        self.client.set_terminated(self.run_id)


class WandbTracker:
    """Weights & Biases; WANDB_MODE=offline writes to OUTPUT_DIR/wandb without an account (`wandb sync` later)."""

    def __init__(self, config: RunConfig, run_dir: Path, resume: bool):
        import wandb

        offline = os.environ.get("WANDB_MODE") in {"offline", "disabled"}
        if not offline and not os.environ.get("WANDB_API_KEY") and not _netrc_has_wandb():
            raise ConfigError("training.tracker", [
                "'wandb' needs a Weights & Biases login: run `wandb login`, or set WANDB_MODE=offline to log locally "
                "(sync later with `wandb sync`)"])
        run_id = (_remembered_run_id(run_dir, "wandb") if resume else None) or uuid.uuid4().hex[:8]
        settings = wandb.Settings(console="off", save_code=False, disable_git=True, silent=True)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "lorakit"), name=run_dir.name,
                              dir=str(run_dir), id=run_id, resume="allow", config=tracked_params(config),
                              settings=settings)
        _remember_run_id(run_dir, "wandb", run_id)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def finish(self, run_dir: Path) -> None:
        import wandb

        artifact = wandb.Artifact(f"{run_dir.name}-run", type="lorakit-run")
        for name in ARTIFACTS:
            if (run_dir / name).is_file():
                artifact.add_file(str(run_dir / name))
        self.run.log_artifact(artifact)
        self.run.finish()


def _netrc_has_wandb() -> bool:
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def open_tracker(config: RunConfig, run_dir: Path, *, resume: bool) -> ExperimentTracker | None:
    """The configured tracker, or None for `tracker: none`; a missing package is a config error with the fix."""
    kind = config.training.tracker
    if kind == "none":
        return None
    package = {"mlflow": "mlflow", "wandb": "wandb"}[kind]
    try:
        __import__(package)
    except ImportError:
        raise ConfigError("training.tracker", [
            f"'{kind}' needs the {package} package: pip install 'lorakit[tracking]'"]) from None
    return MlflowTracker(config, run_dir, resume) if kind == "mlflow" else WandbTracker(config, run_dir, resume)
