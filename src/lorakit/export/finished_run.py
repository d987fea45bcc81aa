"""A finished training run as export and push read it: adapter folder, resolved config, manifest, eval numbers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from lorakit.config import RunConfig
from lorakit.errors import CheckpointError

__all__ = ["FinishedRun", "read_finished_run"]


@dataclass(frozen=True)
class FinishedRun:
    run_dir: Path
    adapter_dir: Path
    config: RunConfig
    manifest: dict
    eval_results: dict | None  # RUN_DIR/eval/eval.json when `lorakit eval` ran on this adapter

    @property
    def quantized_4bit(self) -> bool:
        return bool(self.manifest["settings"].get("quantized_4bit"))

    @property
    def system_prompt(self) -> str:
        return self.config.data.system_prompt


def read_finished_run(path: str | Path) -> FinishedRun:
    """The run at `path` (its output_dir, or its final/ folder); CheckpointError when it is not finished."""
    from lorakit.evaluation.run_eval import EVAL_FILE, adapter_fingerprint, eval_dir, run_root
    from lorakit.inference.generate import resolve_adapter_dir

    adapter_dir = resolve_adapter_dir(path)
    manifest_path = adapter_dir / "manifest.json"
    if not manifest_path.is_file():
        raise CheckpointError(f"{adapter_dir} has no manifest.json; it was not written by `lorakit train`.")
    config = RunConfig.model_validate(yaml.safe_load((adapter_dir / "config.yaml").read_text()))
    manifest = json.loads(manifest_path.read_text())
    eval_file = eval_dir(adapter_dir) / EVAL_FILE
    eval_results = None
    if eval_file.is_file():
        results = json.loads(eval_file.read_text())
        # Numbers of an earlier adapter in the same folder would describe another model.
        if results.get("adapter_sha256") == adapter_fingerprint(adapter_dir):
            eval_results = results
    return FinishedRun(run_root(adapter_dir), adapter_dir, config, manifest, eval_results)
