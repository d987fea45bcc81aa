"""A finished training run as export and push read it: adapter folder, resolved config, manifest, eval numbers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
    from lorakit.evaluation.run_eval import EVAL_FILE
    from lorakit.run.source import read_saved_json, resolve_run_source

    trained = resolve_run_source(path)  # a saved config.yaml that no longer validates is a ConfigError here
    if trained.checkpoint_step is not None:
        raise CheckpointError(f"{path} is a checkpoint; export and push need a finished run (its final/ adapter).",
                              hint="Finish the run with `lorakit train CONFIG --resume`; `lorakit chat` and "
                              "`lorakit eval` work on checkpoints.")
    manifest = trained.manifest
    eval_file = trained.eval_dir / EVAL_FILE
    eval_results = None
    if eval_file.is_file():
        results = read_saved_json(eval_file)
        # Numbers of an earlier adapter in the same folder would describe another model.
        if results.get("adapter_sha256") == trained.fingerprint:
            eval_results = results
    return FinishedRun(trained.run_dir, trained.adapter_dir, trained.config, manifest, eval_results)
