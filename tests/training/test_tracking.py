"""Experiment tracking next to TensorBoard: MLflow (local store, offline) and Weights & Biases (offline mode) get
the same metrics as metrics.jsonl, the resolved config and the manifest; never the data or a token."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import QA_PAIRS, metric_records, tiny_run_config
from lorakit.errors import ConfigError
from lorakit.training.loop import train
from lorakit.training.tracking import open_tracker, tracked_params

PLANTED_TOKEN = "hf_PlantedTrackingToken0123456789abcdef"


def _config(model_dir, data, run, tracker):
    config = tiny_run_config(model_dir, data, run, max_steps=2, eval_steps=2, save_steps=2)
    return config.model_copy(update={"training": config.training.model_copy(update={"tracker": tracker})})


def _logged_losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["train_loss"] for r in metric_records(run) if "train_loss" in r}


def _assert_no_secret_or_data(folder: Path) -> None:
    answer = QA_PAIRS[0][1].encode()  # a training answer: the data never leaves the run's own files
    for path in folder.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert PLANTED_TOKEN.encode() not in content, path
            assert answer not in content, path


def test_tracked_params_are_the_resolved_config_with_tokens_masked(tiny_llama_dir, qa_file, tmp_path):
    config = _config(tiny_llama_dir, qa_file, tmp_path / "run", "none")
    config.data.system_prompt = f"Be careful. {PLANTED_TOKEN}"
    params = tracked_params(config)
    assert params["lora.r"] == "4" and params["training.max_steps"] == "2" and params["model.max_length"] == "128"
    assert params["data.system_prompt"] == "Be careful. hf_***"


def test_mlflow_local_store_gets_metrics_config_and_manifest(tiny_llama_dir, qa_file, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("HF_TOKEN", PLANTED_TOKEN)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = tmp_path / "run"
    train(_config(tiny_llama_dir, qa_file, run, "mlflow"))
    run_id = json.loads((run / "tracking.json").read_text())["run_id"]
    client = MlflowClient(tracking_uri=f"sqlite:///{run.resolve() / 'mlflow.db'}",
                          registry_uri=(run.resolve() / "mlflow-registry").as_uri())
    history = {m.step: m.value for m in client.get_metric_history(run_id, "train/loss")}
    assert history == pytest.approx(_logged_losses(run))
    logged = client.get_run(run_id)
    assert logged.data.params["lora.r"] == "4" and logged.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"manifest.json", "config.yaml", "loss_curve.png"} <= artifacts
    _assert_no_secret_or_data(run / "mlartifacts")
    assert PLANTED_TOKEN.encode() not in (run / "mlflow.db").read_bytes()

    reopened = open_tracker(_config(tiny_llama_dir, qa_file, run, "mlflow"), run, resume=True)
    assert reopened.run_id == run_id  # --resume continues the same tracked run


def test_wandb_offline_gets_metrics_config_and_manifest(tiny_llama_dir, qa_file, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", PLANTED_TOKEN)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    train(_config(tiny_llama_dir, qa_file, run, "wandb"))
    run_id = json.loads((run / "tracking.json").read_text())["run_id"]
    [offline] = list((run / "wandb").glob(f"offline-run-*-{run_id}"))
    assert (offline / f"run-{run_id}.wandb").stat().st_size > 0
    history = _read_wandb_history(offline / f"run-{run_id}.wandb")
    assert {row["_step"]: row["train/loss"] for row in history if "train/loss" in row} == _logged_losses(run)
    validation = {r["step"]: r["val_loss"] for r in metric_records(run) if "val_loss" in r}
    assert validation and {row["_step"]: row["val/loss"] for row in history if "val/loss" in row} == validation
    log = (offline / f"run-{run_id}.wandb").read_bytes()
    assert b"lora.r" in log  # the resolved config
    assert all(name.encode() in log for name in ("manifest.json", "config.yaml", "loss_curve.png"))  # the artifact
    _assert_no_secret_or_data(run / "wandb")


def _read_wandb_history(path: Path) -> list[dict]:
    """The history rows of an offline run's transaction log (wandb >= 0.2x ships no Python reader for it). The file
    is a 7-byte header, then LevelDB-log blocks of 32 KiB: chunks of a 7-byte header (crc32, length, type: 1 whole,
    2 first, 3 middle, 4 last) and a piece of one protobuf Record."""
    from wandb.proto.wandb_internal_pb2 import Record

    content, block, rows, pending = path.read_bytes(), 32768, [], b""
    assert content[:4] == b":W&B", content[:7]
    offset = 7
    while offset + 7 <= len(content):
        if block - offset % block < 7:  # a block's tail too short for a chunk header is padding
            offset += block - offset % block
            continue
        length, kind = int.from_bytes(content[offset + 4:offset + 6], "little"), content[offset + 6]
        if length == kind == 0:
            break
        pending += content[offset + 7:offset + 7 + length]
        offset += 7 + length
        if kind in (1, 4):
            record = Record.FromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
    return rows


def test_wandb_without_login_or_offline_mode_is_a_config_error(tiny_llama_dir, qa_file, tmp_path, monkeypatch):
    for name in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    config = _config(tiny_llama_dir, qa_file, tmp_path / "run", "wandb")
    (tmp_path / "run").mkdir()
    with pytest.raises(ConfigError, match="'wandb' needs a Weights & Biases login: run `wandb login`, or set "
                                          "WANDB_MODE=offline"):
        open_tracker(config, tmp_path / "run", resume=False)
