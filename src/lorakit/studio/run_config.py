"""From the page's choices (model, data files, preset, extra `--set` lines) to a RunConfig, and to the YAML file
RUN/studio.yaml that `lorakit train` runs exactly as the page does."""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

from lorakit.config import EMBEDDED_MODEL_ALIAS, RunConfig, dump_config, load_config
from lorakit.studio.presets import DEFAULT_PRESET, preset_overrides
from lorakit.studio.workspace import Workspace

__all__ = ["STUDIO_CONFIG", "RunChoices", "studio_config", "write_studio_config"]

STUDIO_CONFIG = "studio.yaml"


class RunChoices(BaseModel):
    """What step 2 of the page sends: everything else comes from the config's defaults."""

    model_config = ConfigDict(extra="forbid")

    run: str = Field(..., description="Run name: the folder WORKDIR/runs/RUN.")
    model: str = Field(EMBEDDED_MODEL_ALIAS, description="model.name: the embedded alias, a local folder or a Hub id.")
    data_files: list[str] = Field(..., min_length=1, description="Data file names under WORKDIR/data.")
    preset: str = DEFAULT_PRESET
    overrides: list[str] = Field(default_factory=list, description="Extra `--set KEY=VALUE` lines, applied last.")


def _overrides(choices: RunChoices) -> list[str]:
    return preset_overrides(choices.preset) + [line.strip() for line in choices.overrides if line.strip()]


def studio_config(workspace: Workspace, choices: RunChoices) -> tuple[RunConfig, Path]:
    """The validated config for `choices` (every problem at once, as ConfigError) and the run folder it names."""
    run_dir = workspace.run_dir(choices.run, exists=False)
    base = {
        "output_dir": str(run_dir),
        "model": {"name": choices.model},
        "data": {"train_file": [str(workspace.data_path(name)) for name in choices.data_files]},
    }
    staging = workspace.root / f".{choices.run}.studio.yaml"
    staging.write_text(yaml.safe_dump(base, sort_keys=False))
    try:
        config = load_config(staging, _overrides(choices))
    finally:
        staging.unlink(missing_ok=True)
    return config, run_dir


def write_studio_config(workspace: Workspace, choices: RunChoices) -> Path:
    """RUN/studio.yaml: the complete resolved config, runnable as `lorakit train RUN/studio.yaml`."""
    config, run_dir = studio_config(workspace, choices)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / STUDIO_CONFIG
    header = (f"# Written by lorakit studio (preset: {choices.preset}).\n"
              f"# Run it from a terminal: lorakit train {path}\n")
    temporary = path.with_suffix(".yaml.tmp")
    temporary.write_text(header + dump_config(config))
    os.replace(temporary, path)
    return path
