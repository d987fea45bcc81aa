"""What may change between a checkpoint and its resume: each setting is refused, named in a warning, or ignored.

A resume restores the optimizer and scheduler from the checkpoint, so before this check a new learning_rate
was silently ignored while final/config.yaml recorded it, a new scheduler made the learning rate jump mid-run,
and a new data.validation_split re-split the data, scoring examples already trained on as validation.

- Refused: settings that change what the remaining steps compute or what the earlier ones meant (the optimiser
  and schedule, the split, the data rendering, the LoRA branch, the base model and its quantisation). Any setting
  not named below is refused too, so a new config key is safe until someone decides otherwise.
- Warned: settings a user may legitimately change to continue (train longer, another precision or memory plan
  on another GPU, other log/eval/save intervals). The WARNING names them; final/config.yaml holds the new
  values and the manifest's `resumes` records old and new.
- Ignored: settings training never reads (inference, eval, serve, mode, opt-ins checked at load time) and
  output_dir (a run folder may move).

The library versions and the GPU model are recorded with each checkpoint too (`environment`); another one is
named in a WARNING, because a continuation is bit-identical to an uninterrupted run only on the same stack.
The table is in docs/training.md ("Resuming with changed settings"). `check_same_run` refuses, in one message,
both a changed run identity (data, base model, tokenizer, LoRA shape: recorded in trainer_state.json) and the
refused settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from lorakit.errors import CheckpointError
from lorakit.run.layout import CONFIG
from lorakit.run.manifest import package_versions

__all__ = ["check_same_run", "SettingChange", "ResumeDrift", "flat_settings", "settings_drift", "read_saved_settings",
           "unrecorded_layout_settings", "same_micro_batches", "as_micro_batch", "current_environment",
           "environment_changes", "WARNED_SETTINGS", "IGNORED_PREFIXES"]

# Why continuing with a new value is legitimate, and what the remaining steps then do differently.
WARNED_SETTINGS = {
    "training.max_steps": "the learning-rate schedule of the remaining steps follows the new total",
    "training.precision": "the remaining steps compute in another precision (not bit-identical to an uninterrupted run)",
    "training.gradient_checkpointing": "memory use changes; the math does not",
    "training.distributed": "the steps are shared out differently; the last bits may differ",
    "training.logging_steps": "train loss is logged at the new interval",
    "training.eval_steps": "validation loss is measured at the new interval",
    "training.save_steps": "checkpoints are saved at the new interval",
    "training.save_total_limit": "rotation keeps the new number of checkpoints",
    "training.early_stopping_patience": "early stopping judges the remaining evaluations by the new rule",
    "training.early_stopping_min_delta": "early stopping judges the remaining evaluations by the new rule",
    "training.tracker": "metrics go to the new tracker from here on",
    "data.train_file": "the contents are the same (their sha256 is checked); only the path changed",
    "training.shared_prefix": "rows are laid out as before (the run identity refuses a resume that would switch "
    "the shared-prefix layout; this flag had no effect in the checkpoint's run or has none now)",
}
# Sections and settings that training does not read.
IGNORED_PREFIXES = ("inference.", "eval.", "serve.", "mode", "output_dir", "model.trust_remote_code",
                    "model.allow_pickle", "data.allow_phi")
# Why a refused setting cannot change mid-run (the rest are refused with the generic reason).
_REFUSAL_REASONS = {
    "training.learning_rate": "the optimizer and scheduler continue from the checkpoint's learning rate, so the new "
    "one would be recorded but not used",
    "training.lr_scheduler": "the learning rate would jump to another schedule mid-run",
    "training.warmup_steps": "the learning rate would jump to another schedule mid-run",
    "training.weight_decay": "the optimizer continues with the checkpoint's weight decay",
    "data.validation_split": "the data would be re-split, scoring examples already trained on as validation",
    "data.test_split": "the data would be re-split, scoring examples already trained on as test",
    "lora.dropout": "the steps so far trained with the checkpoint's dropout",
    "training.shared_prefix": "the checkpoint does not record whether its rows shared prefixes (written before lorakit "
    "recorded it), so the layout may switch, and the layouts agree only up to float rounding",
}
# The rules for the identity keys that record a run's training.shared_prefix layout (preference_setup.method_identity),
# in one place: key -> the key that decides it where the checkpoint has that one. Each flag key (the setting as the
# user set it, all that checkpoints recorded until sessions 12 and 13) is decided by the key recording whether
# sharing took effect (it does not under NEFTune, whatever the flag says); a checkpoint without the effect's key is
# compared on the flag, as it was written. All are recorded later than the first checkpoints: compared only where the
# checkpoint has them, and one of packed SFT or preference pairs that holds none of them was written before any was
# recorded: only the flag in its config tells its layout, so switching training.shared_prefix stays refused for it
# (unrecorded_layout_settings), as it was then.
_LAYOUT_KEYS: dict[str, str | None] = {
    "packed_shared_prefix": "packed_rows_share_prefixes",
    "packed_rows_share_prefixes": None,
    "preference_shared_prefix": "preference_pairs_share_prefixes",
    "preference_pairs_share_prefixes": None,
}


@dataclass(frozen=True)
class SettingChange:
    key: str  # dotted, e.g. training.learning_rate
    old: object
    new: object

    def describe(self) -> str:
        return f"{self.key}: checkpoint has {self.old!r}, now {self.new!r}"


@dataclass(frozen=True)
class ResumeDrift:
    refused: list[SettingChange]
    warned: list[SettingChange]

    def refused_details(self) -> list[str]:
        return [change.describe() + (f" ({_REFUSAL_REASONS[change.key]})" if change.key in _REFUSAL_REASONS else "")
                for change in self.refused]

    def warning(self) -> str | None:
        if not self.warned:
            return None
        parts = "; ".join(f"{c.describe()} ({WARNED_SETTINGS[c.key]})" for c in self.warned)
        return f"Resuming with changed settings: {parts}. final/config.yaml and the manifest record the new values."


def flat_settings(config: dict, prefix: str = "") -> dict[str, object]:
    """A nested config dict as dotted keys: {"training": {"learning_rate": 1}} -> {"training.learning_rate": 1}.

    >>> flat_settings({"seed": 1, "lora": {"r": 4, "target_modules": ["q"]}})
    {'seed': 1, 'lora.r': 4, 'lora.target_modules': ['q']}
    """
    flat: dict[str, object] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flat_settings(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def unrecorded_layout_settings(saved_identity: dict, saved: dict[str, object]) -> frozenset[str]:
    """The warned settings a resume from this checkpoint must refuse all the same: training.shared_prefix where
    the checkpoint's rows could have shared prefixes (packed SFT, preference pairs) and its identity does not say
    whether they did. `saved`: the checkpoint's flat config.

    >>> sorted(unrecorded_layout_settings({"packing": True}, {"training.method": "sft", "training.packing": True}))
    ['training.shared_prefix']
    >>> sorted(unrecorded_layout_settings({"training_method": "dpo"}, {"training.method": "dpo"}))
    ['training.shared_prefix']
    >>> sorted(unrecorded_layout_settings({"packed_shared_prefix": True}, {"training.packing": True}))
    []
    >>> sorted(unrecorded_layout_settings({}, {"training.method": "sft", "training.packing": False}))
    []
    """
    if any(key in saved_identity for key in _LAYOUT_KEYS):
        return frozenset()
    could_share = saved.get("training.method", "sft") != "sft" or bool(saved.get("training.packing"))
    return frozenset({"training.shared_prefix"}) if could_share else frozenset()


def same_micro_batches(saved_batch: object, current_batch: object, data_rows: int) -> bool:
    """Whether a checkpoint's micro-batch and the resuming run's differ but cut the training data into the same
    micro-batches: both take every row the data fills (`data_rows`: PreparedData.rows_to_fill), one micro-batch of all
    of them per epoch. An `auto` micro-batch is capped at those rows (plan/candidates.micro_batch_choices); a
    checkpoint planned before the cap holds a bigger one, which trained on the same batches.

    >>> same_micro_batches(64, 8, data_rows=8), same_micro_batches(16, 10, data_rows=12), same_micro_batches(8, 8, 8)
    (True, False, False)
    """
    return (isinstance(saved_batch, int) and isinstance(current_batch, int) and saved_batch != current_batch
            and min(saved_batch, data_rows) == min(current_batch, data_rows))


def as_micro_batch(saved: dict[str, object], saved_identity: dict, micro_batch: int) -> tuple[dict[str, object], dict]:
    """A checkpoint's flat config and identity read as if it had trained with `micro_batch` (same_micro_batches
    holds): training.batch_size, the identity's batch_size and its effective batch size (x its gradient accumulation).

    >>> as_micro_batch({"training.batch_size": 64}, {"batch_size": 64, "effective_batch_size": 128}, 8)
    ({'training.batch_size': 8}, {'batch_size': 8, 'effective_batch_size': 16})
    """
    old = saved_identity["batch_size"]
    identity = {**saved_identity, "batch_size": micro_batch}
    if "effective_batch_size" in identity:
        identity["effective_batch_size"] = identity["effective_batch_size"] // old * micro_batch
    if saved.get("training.batch_size") == old:
        saved = {**saved, "training.batch_size": micro_batch}
    return saved, identity


def settings_drift(saved: dict[str, object], current: dict[str, object],
                   refuse: frozenset[str] = frozenset()) -> ResumeDrift:
    """Sort the settings that differ between a checkpoint's config and the resuming one (both flat); `refuse`:
    warned settings refused for this checkpoint (`unrecorded_layout_settings`).

    >>> drift = settings_drift({"training.learning_rate": 0.1, "training.max_steps": 4, "eval.safety": True},
    ...                        {"training.learning_rate": 0.2, "training.max_steps": 8, "eval.safety": False})
    >>> [c.key for c in drift.refused], [c.key for c in drift.warned]
    (['training.learning_rate'], ['training.max_steps'])
    """
    refused, warned = [], []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key), current.get(key)
        if old == new or key.startswith(IGNORED_PREFIXES):
            continue
        (warned if key in WARNED_SETTINGS and key not in refuse else refused).append(SettingChange(key, old, new))
    return ResumeDrift(refused, warned)


def read_saved_settings(checkpoint: Path) -> dict[str, object]:
    """The flat resolved config a checkpoint was saved with (its config.yaml, sha256-verified with the rest)."""
    return flat_settings(yaml.safe_load((checkpoint / CONFIG).read_text()) or {})


def current_environment(device: torch.device) -> dict[str, str | None]:
    """The library versions and accelerator a checkpoint is written with."""
    versions = package_versions()
    environment = {name: versions.get(name) for name in ("lorakit", "torch", "transformers", "peft")}
    environment["gpu"] = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return environment


def environment_changes(saved: dict | None, current: dict) -> list[SettingChange]:
    """What differs from the checkpoint's environment (none for a checkpoint written before it was recorded)."""
    if not saved:
        return []
    return [SettingChange(key, saved.get(key), current.get(key)) for key in sorted(current)
            if saved.get(key) != current.get(key)]


# What each identity key means, for the message that refuses a resume.
_IDENTITY_LABELS = {
    "data_sha256": "the training data",
    "model_id": "the base model",
    "model_revision": "the base model revision",
    "model_fingerprint": "the base model's weights",
    "lora_r": "the LoRA rank",
    "lora_alpha": "the LoRA alpha",
    "lora_target_modules": "the LoRA target modules",
    "max_length": "model.max_length",
    "system_prompt_sha256": "the system prompt",
    "seed": "the seed",
    "effective_batch_size": "the effective batch size",
    "packing": "training.packing",
    "lora_use_dora": "lora.use_dora",
    "lora_use_rslora": "lora.use_rslora",
    "loraplus_lr_ratio": "training.loraplus_lr_ratio",
    "neftune_noise_alpha": "training.neftune_noise_alpha",
    "chat_template_sha256": "model.chat_template",
    "tokenizer_sha256": "the tokenizer (its vocabulary, special tokens or chat template)",
    **dict.fromkeys(_LAYOUT_KEYS, "training.shared_prefix"),
}


# The setting each identity key comes from: a refused setting change that an identity change already names is
# not named twice.
_IDENTITY_SETTINGS = {
    "model_id": "model.name", "model_revision": "model.revision", "lora_r": "lora.r", "lora_alpha": "lora.alpha",
    "lora_target_modules": "lora.target_modules", "max_length": "model.max_length", "seed": "seed",
    "system_prompt_sha256": "data.system_prompt", "batch_size": "training.batch_size", "packing": "training.packing",
    "lora_use_dora": "lora.use_dora", "lora_use_rslora": "lora.use_rslora",
    "loraplus_lr_ratio": "training.loraplus_lr_ratio", "neftune_noise_alpha": "training.neftune_noise_alpha",
    "chat_template_sha256": "model.chat_template", **dict.fromkeys(_LAYOUT_KEYS, "training.shared_prefix"),
}
# Identity keys that older checkpoints do not record: compared only when the checkpoint has them.
_RECORDED_LATER = {"tokenizer_sha256", *_LAYOUT_KEYS}
# Keys that a later key decides when the checkpoint has it: compared only for checkpoints written before it
# (the shared-prefix flags: _LAYOUT_KEYS).
_SUPERSEDED_BY = {key: later for key, later in _LAYOUT_KEYS.items() if later is not None}


def check_same_run(saved: dict, current: dict, changed_settings: list[tuple[str, str]] = ()) -> None:
    """Refuse to resume when the data, model or LoRA shape changed since the checkpoint, or any of
    `changed_settings` (setting key, description) that training/resume_drift.py refuses."""
    changed = [key for key in sorted(set(saved) | set(current)) if saved.get(key) != current.get(key)
               and not (key in _RECORDED_LATER and key not in saved)
               and not (key in _SUPERSEDED_BY and _SUPERSEDED_BY[key] in saved)]
    if "chat_template_sha256" in changed and "tokenizer_sha256" in changed:  # the override is the tokenizer's template
        changed.remove("tokenizer_sha256")
    named = {_IDENTITY_SETTINGS.get(key) for key in changed}
    settings = [(key, text) for key, text in changed_settings if key not in named]
    if changed or settings:
        what = ", ".join([_IDENTITY_LABELS.get(key, key) for key in changed] + [key for key, _ in settings])
        details = "; ".join([f"{key}: checkpoint has {saved.get(key)!r}, now {current.get(key)!r}" for key in changed]
                            + [text for _, text in settings])
        raise CheckpointError(
            f"Cannot resume: {what} changed since the checkpoint ({details}).",
            hint="Restore the checkpoint's settings (its config.yaml holds them all), or start a new run: "
            "--overwrite, or another output_dir.",
        )
