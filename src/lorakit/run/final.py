"""The files of final/ besides the adapter weights and tokenizer: the resolved config, the manifest (with the
adapter files' sha256s) and the model card, plus the run-level copies of config and manifest."""

from __future__ import annotations

import json
from pathlib import Path

from lorakit.config import RunConfig, dump_config
from lorakit.run.adapter_files import ADAPTER_FILES_KEY, adapter_file_digests
from lorakit.run.layout import CONFIG, MANIFEST, MODEL_CARD
from lorakit.run.model_card import model_card
from lorakit.run.source import finished_run_source
from lorakit.runtime.atomic_files import atomic_write_text

__all__ = ["write_final_files"]


def write_final_files(run_dir: Path, staging: Path, config: RunConfig, manifest: dict) -> None:
    """Write them into `staging` (final/ being written, weights and tokenizer already in it) and into `run_dir`.

    `manifest` gains the adapter files' sha256s, verified by every command that loads final/."""
    manifest[ADAPTER_FILES_KEY] = adapter_file_digests(staging)
    manifest_text = json.dumps(manifest, indent=2)
    atomic_write_text(run_dir / MANIFEST, manifest_text)
    atomic_write_text(run_dir / CONFIG, dump_config(config))
    (staging / CONFIG).write_text(dump_config(config))
    (staging / MANIFEST).write_text(manifest_text)
    # peft's save_pretrained writes an empty template card; replace it with one built from the manifest.
    (staging / MODEL_CARD).write_text(model_card(finished_run_source(run_dir, config, manifest, manifest_text), "adapter"))
