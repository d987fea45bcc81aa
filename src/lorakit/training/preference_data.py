"""Read the configured preference files (training.method dpo/orpo/simpo): every file must hold pairs, and the
pairs are checked as `lorakit data check` checks them (format, privacy scan, the mask on both answers); an error
stops here, before the model is loaded. training/dataset.py splits and renders them."""

from __future__ import annotations

from lorakit.config import RunConfig
from lorakit.data.issues import DataReport
from lorakit.data.preference import PreferencePair
from lorakit.data.preference_check import is_preference_file, load_checked_preferences
from lorakit.errors import DataError

__all__ = ["read_preference_pairs"]


def read_preference_pairs(config: RunConfig, tokenizer, *, action: str = "preference training did not start",
                          ) -> tuple[list[PreferencePair], DataReport]:
    """The pairs of data.train_file when they are clean; a DataError naming the file (and line) otherwise, whose
    message says that `action` happened."""
    method = config.training.method
    for path in config.data.train_files:
        if not is_preference_file(path):
            raise DataError(path, 1, None, f"is not a preference pair, and training.method {method} trains on "
                            "prompt/chosen/rejected pairs", hint="Point data.train_file at a preference file "
                            "(`lorakit review export RUN --preferences FILE` writes one), or set training.method: sft.")
    return load_checked_preferences(config.data.train_files, tokenizer, config.model.max_length,
                                    config.data.system_prompt, config.data.allow_phi, action)
