"""The transformers floor: pyproject.toml and the check before a model load agree, and a too-old transformers stops
`lorakit train` with one actionable message (exit 2) before any weights are read."""

from __future__ import annotations

import tomllib
from pathlib import Path

from conftest import write_config_file
from lorakit.cli.app import run_cli
from lorakit.model import transformers_version
from lorakit.model.transformers_version import MIN_TRANSFORMERS

REPO = Path(__file__).resolve().parents[2]


def test_pyproject_floor_is_the_checked_floor():
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    [transformers] = [d for d in dependencies if d.startswith("transformers")]
    assert transformers == f"transformers>={MIN_TRANSFORMERS.removesuffix('.0')}"


def test_a_too_old_transformers_stops_train_with_the_upgrade_command(tiny_llama_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(transformers_version, "version", lambda name: {"transformers": "5.23.0"}[name])
    config = write_config_file(tmp_path, tiny_llama_dir, seed=1, training={"max_steps": 1, "batch_size": 2})
    assert run_cli(["train", str(config)]) == 2
    assert capsys.readouterr().err.endswith(
        "error: lorakit needs transformers>=5.24.0; you have 5.23.0.\nhint: pip install -U transformers\n"
    )
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_tested_floor_and_newer_releases_pass():
    for installed in ("5.24.0", "5.24.0.dev0", "5.25.0", "6.0.0"):
        transformers_version.require_supported_transformers(installed)
