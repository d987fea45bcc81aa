"""The one reader of a run folder: which trained adapter a path names, and what every later command (chat, serve,
eval, export, push, the report, the model card) needs of it: the resolved config, the manifest, the data hash it
was trained on, where its eval results go and, for a finished run, those results.

Three kinds of folder hold an adapter:
- a finished run (`output_dir`, whose `final/` holds adapter, config.yaml and manifest.json) or that
  `final/` folder itself (or a copy of it elsewhere);
- a checkpoint of a run, finished or not (`output_dir/checkpoints/step-N`): adapter weights, config.yaml
  and trainer_state.json, but no manifest.json, which is only written when training ends.
Anything else is refused with what was expected, and an unfinished run names the checkpoint to pass.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

from lorakit.config import RunConfig, load_config
from lorakit.errors import CheckpointError, ConfigError
from lorakit.run.adapter_files import ADAPTER_FILES_KEY, adapter_files_problem
from lorakit.run.checkpoints import latest_good_checkpoint, verify_checkpoint
from lorakit.run.layout import (
    ADAPTER_CONFIG,
    CHECKPOINT_MANIFEST,
    CHECKPOINTS,
    CONFIG,
    EVAL,
    EVAL_FILE,
    FINAL,
    MANIFEST,
    TRAINER_STATE,
)

__all__ = ["RunSource", "Permissions", "resolve_run_source", "read_finished_run", "finished_run_source",
           "load_saved_config", "refuse_saved_permissions", "read_saved_json", "saved_value"]

_EXPECTED_HINT = ("Pass the output_dir of a `lorakit train` run, its final/ folder, or one of its "
                  "checkpoints/step-N folders.")


@dataclass(frozen=True)
class RunSource:
    """A trained adapter and what it was trained with."""

    adapter_dir: Path  # the LoRA weights: final/, an adapter folder, or checkpoints/step-N
    run_dir: Path  # the run's output_dir (for a copied adapter folder: that folder)
    config: RunConfig
    data_sha256: str  # of the training data, as recorded when the adapter was saved
    quantized_4bit: bool  # the base model was trained in nf4 (only possible on CUDA)
    fingerprint: str  # sha256 of the adapter's manifest: identifies which adapter an eval belongs to
    checkpoint_step: int | None = None  # set when the adapter is a checkpoint, not a finished run's final/
    manifest: dict | None = None  # a finished run's manifest.json, as read (checkpoints have none)
    eval_results: dict | None = None  # RUN/eval/eval.json of this adapter, read by `read_finished_run` only

    @property
    def eval_dir(self) -> Path:
        """RUN/eval for a finished run; RUN/eval/step-N for a checkpoint, so the two never mix."""
        root = self.run_dir / EVAL
        return root if self.checkpoint_step is None else root / self.adapter_dir.name

    @property
    def system_prompt(self) -> str:
        return self.config.data.system_prompt


def _is_finished_adapter(path: Path) -> bool:
    return all((path / name).is_file() for name in (ADAPTER_CONFIG, CONFIG, MANIFEST))


def _is_checkpoint(path: Path) -> bool:
    return (path / CHECKPOINT_MANIFEST).is_file() and (path / ADAPTER_CONFIG).is_file()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _manifest_source(adapter_dir: Path, run_dir: Path, config: RunConfig, manifest: dict, manifest_path: Path,
                     fingerprint: str) -> RunSource:
    return RunSource(adapter_dir, run_dir, config, saved_value(manifest_path, manifest, "data", "sha256"),
                     bool(saved_value(manifest_path, manifest, "settings").get("quantized_4bit")),
                     fingerprint, manifest=manifest)


def load_saved_config(path: Path) -> RunConfig:
    """A config.yaml that lorakit saved with an adapter, validated and reported like any config file."""
    try:
        return load_config(path, warn_retired=False)
    except ConfigError as exc:
        exc.hint = ("This config.yaml was saved with the adapter; it no longer validates (edited by hand, or written "
                    "by another lorakit version). Fix the lines named above.")
        raise


@dataclass(frozen=True)
class Permissions:
    """What the person running a command lets a trained run's base model do (--trust-remote-code, --allow-pickle).

    A run folder can come from anyone (a download, a colleague's copy), so its saved config.yaml may ask for these
    but never grants them."""

    trust_remote_code: bool = False
    allow_pickle: bool = False


def refuse_saved_permissions(config: RunConfig, saved_at: Path, permissions: Permissions) -> None:
    """ConfigError naming the run's saved config (`saved_at`) when it asks for what `permissions` does not allow."""
    model = config.model
    problems = []
    if model.trust_remote_code and not permissions.trust_remote_code:
        problems.append(f"model.trust_remote_code: true would run Python code shipped with the base model "
                        f"({model.name}) on this machine; pass --trust-remote-code if you trust that code")
    if model.allow_pickle and not permissions.allow_pickle:
        problems.append(f"model.allow_pickle: true would unpickle the base model's .bin weights ({model.name}); "
                        f"pass --allow-pickle if you trust those files")
    if problems:
        error = ConfigError(str(saved_at), problems)
        error.hint = "A run's saved config cannot turn these on by itself: the run folder may come from someone else."
        raise error


def _damaged(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{path} is damaged: it {what}.",
                           hint="lorakit wrote this file and it was changed or cut short since: copy the folder "
                                "again from where it was made, or run the command that writes it again.")


def saved_value(path: Path, document, *keys: str):
    """document[keys[0]][keys[1]]... of a JSON file lorakit wrote (read from `path`); CheckpointError if missing."""
    try:
        for key in keys:
            document = document[key]
        return document
    except (KeyError, TypeError, IndexError):
        raise _damaged(path, "has no " + "".join(f"[{key!r}]" for key in keys)) from None


def read_saved_json(path: Path, *keys: str):
    """The value at `keys` in a JSON file lorakit wrote; a damaged or hand-edited file is a CheckpointError."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _damaged(path, f"cannot be read ({exc})") from None
    return saved_value(path, document, *keys)


def _finished(adapter_dir: Path) -> RunSource:
    config = load_saved_config(adapter_dir / CONFIG)
    manifest_path = adapter_dir / MANIFEST
    manifest = read_saved_json(manifest_path)
    run_dir = adapter_dir.parent if adapter_dir.name == FINAL else adapter_dir
    problem = adapter_files_problem(adapter_dir, manifest.get(ADAPTER_FILES_KEY) if isinstance(manifest, dict) else None)
    if problem is not None:  # before any loader reads a file of it (a pickle would run in torch.load)
        raise CheckpointError(f"The adapter in {adapter_dir} is not the one training wrote: {problem}.",
                              hint="Copy the run folder again from where it was trained (or train again); lorakit "
                                   "loads no adapter file it cannot verify.")
    return _manifest_source(adapter_dir, run_dir, config, manifest, manifest_path, _sha256(manifest_path))


def _checkpoint(path: Path) -> RunSource:
    problem = verify_checkpoint(path)
    if problem is not None:
        raise CheckpointError(f"Checkpoint {path} is damaged ({problem}).",
                              hint="Pass an older checkpoint of the run (see its checkpoints/ folder).")
    config = load_saved_config(path / CONFIG)
    data_sha256 = read_saved_json(path / TRAINER_STATE, "identity", "data_sha256")
    step = read_saved_json(path / CHECKPOINT_MANIFEST, "step")
    # The saved config holds the planner's resolved choice ('nf4' or 'none'), so it says how the base was loaded.
    quantized = config.model.quantization == "nf4"
    run_dir = path.parent.parent if path.parent.name == CHECKPOINTS else path.parent
    return RunSource(path, run_dir, config, data_sha256, quantized, _sha256(path / CHECKPOINT_MANIFEST), step)


def resolve_run_source(path: str | Path) -> RunSource:
    """The adapter that `path` names: a run folder, its final/, an adapter folder, or a checkpoint."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist.", hint=_EXPECTED_HINT)
    if _is_finished_adapter(path / FINAL):
        return _finished(path / FINAL)
    if _is_finished_adapter(path):
        return _finished(path)
    if _is_checkpoint(path):
        return _checkpoint(path)
    if path.name == CHECKPOINTS and (newest := latest_good_checkpoint(path.parent)) is not None:
        raise CheckpointError(f"{path} holds a run's checkpoints; pass one of them, not the folder.",
                              hint=f"For example its newest, {newest}.")
    newest = latest_good_checkpoint(path) if path.is_dir() else None
    if newest is not None:
        raise CheckpointError(
            f"{path} is an unfinished run: it has no {FINAL}/ adapter yet (written when training ends).",
            hint=f"Pass its newest checkpoint, {newest}, or finish the run with `lorakit train CONFIG --resume`.",
        )
    raise CheckpointError(
        f"{path} holds no trained adapter: it is neither a run folder (expected {path / FINAL / ADAPTER_CONFIG}) "
        f"nor a checkpoint folder (expected {path / CHECKPOINT_MANIFEST}).",
        hint=_EXPECTED_HINT,
    )


def read_finished_run(path: str | Path) -> RunSource:
    """The finished run at `path` (its output_dir, or its final/ folder) with its eval results, as export and push
    read it; CheckpointError when `path` is a checkpoint."""
    trained = resolve_run_source(path)  # a saved config.yaml that no longer validates is a ConfigError here
    if trained.checkpoint_step is not None:
        raise CheckpointError(f"{path} is a checkpoint; export and push need a finished run (its final/ adapter).",
                              hint="Finish the run with `lorakit train CONFIG --resume`; `lorakit chat` and "
                              "`lorakit eval` work on checkpoints.")
    eval_file = trained.eval_dir / EVAL_FILE
    eval_results = None
    if eval_file.is_file():
        results = read_saved_json(eval_file)
        # Numbers of an earlier adapter in the same folder would describe another model.
        if results.get("adapter_sha256") == trained.fingerprint:
            eval_results = results
    return replace(trained, eval_results=eval_results)


def finished_run_source(run_dir: Path, config: RunConfig, manifest: dict, manifest_text: str) -> RunSource:
    """The finished run that training is writing (final/ not yet in place), as `read_finished_run` will read it
    back: what the model card that training writes is built from."""
    return _manifest_source(run_dir / FINAL, run_dir, config, manifest, run_dir / FINAL / MANIFEST,
                            hashlib.sha256(manifest_text.encode()).hexdigest())
