"""From the configured preference files to rendered train/validation/test pairs (training.method dpo/orpo/simpo).

The pairs are checked as `lorakit data check` checks them (format, privacy scan, mask on both answers; an
error stops here, before the model is loaded), split by the seeded hash of their prompt so that pairs about one
prompt stay on one side, and rendered by the one renderer SFT uses.
"""

from __future__ import annotations

from lorakit.config import RunConfig
from lorakit.data.conversation import Conversation, Message
from lorakit.data.preference import PreferencePair
from lorakit.data.preference_batch import PreferenceExample, render_preferences
from lorakit.data.preference_check import is_preference_file, load_checked_preferences
from lorakit.data.splits import Splits, split_conversations
from lorakit.errors import DataError

__all__ = ["split_pairs", "prepare_preferences"]


def _prompt_key(pair: PreferencePair) -> str:
    return "\x1e".join(f"{m.role}\x1f{' '.join(m.content.split()).lower()}" for m in pair.prompt)


def split_pairs(pairs: list[PreferencePair], validation_fraction: float, test_fraction: float,
                seed: int) -> Splits[PreferencePair]:
    """The SFT split (data/splits.py) applied to pairs, grouped by prompt: each pair stands in as a conversation
    whose answer is its prompt, and the split keeps conversations with one answer together."""
    stand_ins = [Conversation((Message("user", str(index)), Message("assistant", _prompt_key(pair))))
                 for index, pair in enumerate(pairs)]
    split = split_conversations(stand_ins, validation_fraction, test_fraction, seed)
    return Splits(**{name: [pairs[int(c.messages[0].content)] for c in getattr(split, name)]
                     for name in ("train", "validation", "test")})


def prepare_preferences(config: RunConfig, tokenizer) -> tuple[Splits[PreferenceExample], str, int]:
    """The rendered splits, the data's sha256 and how many pairs were truncated; a DataError (file:line) first."""
    method = config.training.method
    for path in config.data.train_files:
        if not is_preference_file(path):
            raise DataError(path, 1, None, f"is not a preference pair, and training.method {method} trains on "
                            "prompt/chosen/rejected pairs", hint="Point data.train_file at a preference file "
                            "(`lorakit review export RUN --preferences FILE` writes one), or set training.method: sft.")
    pairs, report = load_checked_preferences(config.data.train_files, tokenizer, config.model.max_length,
                                             config.data.system_prompt, config.data.allow_phi)
    by_split = split_pairs(pairs, config.data.validation_split, config.data.test_split, config.seed)
    rendered = {name: render_preferences(getattr(by_split, name), tokenizer, config.data.system_prompt,
                                         config.model.max_length) for name in ("train", "validation", "test")}
    truncated = sum(e.chosen.truncated or e.rejected.truncated for examples in rendered.values() for e in examples)
    return Splits(**rendered), report.data_sha256, truncated
