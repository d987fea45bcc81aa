"""From the page's choices (model, data files, training method, starting run, preset, extra `--set` lines) to a
RunConfig, and to the YAML file RUN/studio.yaml that `lorakit train` runs exactly as the page does."""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

from lorakit.config import EMBEDDED_MODEL_ALIAS, RunConfig, dump_config, load_config, parse_overrides
from lorakit.errors import ConfigError, LorakitError
from lorakit.studio.presets import DEFAULT_PRESET, preset_overrides
from lorakit.studio.training_method import Method, method_problems, starting_run
from lorakit.studio.workspace import Workspace

__all__ = ["STUDIO_CONFIG", "REFUSED_OVERRIDES", "RefusedOverride", "RunChoices", "refuse_locked_overrides",
           "studio_config", "write_studio_config"]

STUDIO_CONFIG = "studio.yaml"
# Settings a request from the page may not set, and why: a run stays inside WORKDIR/runs, and anything that
# lets a model run code is switched on by a person, in a config file, from a terminal.
REFUSED_OVERRIDES: dict[tuple[str, ...], str] = {
    ("output_dir",): "the studio writes each run to WORKDIR/runs/RUN itself",
    ("model", "trust_remote_code"): "running Python code shipped with a model must be turned on by hand in a "
                                    "config file, run with `lorakit train CONFIG`",
    ("model", "allow_pickle"): "loading pickle weights (which can run code) must be turned on by hand in a config "
                               "file, run with `lorakit train CONFIG`",
}


class RefusedOverride(LorakitError):
    """The page sent `--set` lines the studio does not accept (answered 422, every such line named)."""


class RunChoices(BaseModel):
    """What step 2 of the page sends: everything else comes from the config's defaults."""

    model_config = ConfigDict(extra="forbid")

    run: str = Field(..., description="Run name: the folder WORKDIR/runs/RUN.")
    model: str = Field(EMBEDDED_MODEL_ALIAS, description="model.name: the embedded alias, a local folder or a Hub id.")
    data_files: list[str] = Field(..., min_length=1, description="Data file names under WORKDIR/data.")
    preset: str = DEFAULT_PRESET
    overrides: list[str] = Field(default_factory=list, description="Extra `--set KEY=VALUE` lines, applied last.")
    method: Method = Field("sft", description="training.method: sft (example answers), dpo or orpo (preference "
                                              "pairs, such as step 5's export).")
    start_from: str | None = Field(None, description="A finished run under WORKDIR/runs whose adapter this run "
                                                     "starts from (training.init_adapter); None = a fresh adapter.")


def _overrides(choices: RunChoices) -> list[str]:
    preset = preset_overrides(choices.preset)
    if choices.start_from:  # the LoRA shape is the starting run's; a preset's rank would not fit its adapter
        preset = [line for line in preset if not line.startswith("lora.")]
    return preset + _page_lines(choices)


def _page_lines(choices: RunChoices) -> list[str]:
    return [line.strip() for line in choices.overrides if line.strip()]


def _leaf_paths(nested: dict, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The key paths an override sets, through nested values too (`model={allow_pickle: true}`)."""
    paths: list[tuple[str, ...]] = []
    for key, value in nested.items():
        path = prefix + (str(key),)
        paths += _leaf_paths(value, path) if isinstance(value, dict) and value else [path]
    return paths


def refuse_locked_overrides(lines: list[str]) -> None:
    """RefusedOverride naming every line that sets a key in REFUSED_OVERRIDES (or inside one), with the reason.

    >>> refuse_locked_overrides(["training.max_steps=5", "data.train_file=x.jsonl"])
    >>> refuse_locked_overrides(["model={name: m, allow_pickle: true}"])
    Traceback (most recent call last):
    ...
    lorakit.studio.run_config.RefusedOverride: overrides: 'model={name: m, allow_pickle: true}' sets ...
    """
    problems = []
    for line in lines:
        try:
            paths = _leaf_paths(parse_overrides([line]))
        except ConfigError:
            continue  # load_config reports the malformed line with every other config problem
        for path in paths:
            locked = next((key for key in REFUSED_OVERRIDES if path[:len(key)] == key), None)
            if locked is not None:
                problems.append(f"'{line}' sets {'.'.join(locked)}, which the page may not set: "
                                f"{REFUSED_OVERRIDES[locked]}.")
                break
    if problems:
        raise RefusedOverride("overrides: " + "\n".join(problems),
                              hint="Remove the line. For such a run, write a config file and run "
                                   "`lorakit train CONFIG` from a terminal.")


def studio_config(workspace: Workspace, choices: RunChoices) -> tuple[RunConfig, Path]:
    """The validated config for `choices` (every problem at once, as ConfigError) and the run folder it names."""
    refuse_locked_overrides(_page_lines(choices))
    run_dir = workspace.run_dir(choices.run, exists=False)
    data_paths = [workspace.data_path(name) for name in choices.data_files]
    start, problems = starting_run(workspace, choices.start_from, run_dir) if choices.start_from else (None, [])
    problems += method_problems(choices.method, data_paths, choices.model, start)
    base = {
        "output_dir": str(run_dir),
        "model": {"name": choices.model},
        "training": {"method": choices.method,
                     **({"init_adapter": str(start.run_dir)} if start is not None else {})},
        "data": {"train_file": [str(path) for path in data_paths]},
        **({"lora": start.lora} if start is not None else {}),
    }
    staging = workspace.root / f".{choices.run}.studio.yaml"
    staging.write_text(yaml.safe_dump(base, sort_keys=False))
    try:
        config = load_config(staging, _overrides(choices))
    except ConfigError as exc:  # the config's problems and the page's, all at once
        raise ConfigError(exc.source, exc.problems + problems) if problems else exc from None
    finally:
        staging.unlink(missing_ok=True)
    if problems:
        raise ConfigError("step 2", problems)
    return config, run_dir


def write_studio_config(workspace: Workspace, choices: RunChoices) -> Path:
    """RUN/studio.yaml: the complete resolved config, runnable as `lorakit train RUN/studio.yaml`."""
    config, run_dir = studio_config(workspace, choices)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / STUDIO_CONFIG
    start = f", starting from run {choices.start_from}" if choices.start_from else ""
    header = (f"# Written by lorakit studio (preset: {choices.preset}, method: {choices.method}{start}).\n"
              f"# Run it from a terminal: lorakit train {path}\n")
    temporary = path.with_suffix(".yaml.tmp")
    temporary.write_text(header + dump_config(config))
    os.replace(temporary, path)
    return path
