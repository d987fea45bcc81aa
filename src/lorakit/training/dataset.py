"""From the configured train files to tokenized train/validation/test splits.

With a preference method (training.method dpo/orpo/simpo) the train files hold prompt/chosen/rejected pairs:
the train split holds rendered pairs (PreferenceExample) and the validation and test splits the held-out pairs'
chosen answers as SFT examples, so validation and test loss read "how likely the preferred answers are" and
`lorakit eval` finds the same held-out questions training left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from lorakit.config import RunConfig
from lorakit.data.issues import DataReport
from lorakit.data.packing import pack_best_fit
from lorakit.data.preference_batch import PairLayout, PreferenceExample, pair_layout, render_preferences
from lorakit.data.records import Conversation
from lorakit.data.render import TokenizedExample
from lorakit.data.shared_packing import PrefixSharing, prefix_sharing
from lorakit.data.splits import Splits, split_conversations
from lorakit.data.token_cache import render_cached
from lorakit.data.validate import load_checked_conversations
from lorakit.runtime.logging import get_logger
from lorakit.training.preference_data import read_preference_pairs

__all__ = ["PreparedData", "example_length", "read_train_conversations", "prepare_data"]

log = get_logger("training.dataset")


@dataclass(frozen=True)
class PreparedData:
    splits: Splits[TokenizedExample]  # with a preference method, train holds PreferenceExamples
    data_sha256: str
    truncated: int
    without_targets: int
    source_urls: list[str] = field(default_factory=list)
    notes: dict = field(default_factory=dict)

    # The two summaries below walk every example; the data never changes after prepare_data, and the planner asks
    # again on every out-of-memory re-plan (plan/oom.py), so each is computed once. cached_property writes the
    # instance's __dict__ directly, which a frozen dataclass allows.
    @cached_property
    def longest_example(self) -> int:
        """Tokens of the longest sequence in any split (of a pair: its longer answer's): without packing a
        micro-batch is padded to its longest sequence, not to max_length, so the memory planner plans for this."""
        splits = self.splits
        return max(example_length(e) for examples in (splits.train, splits.validation, splits.test) for e in examples)

    @cached_property
    def prefix_sharing(self) -> PrefixSharing | None:
        """The SFT training examples' lengths and shared prefixes, for the planner (None for preference pairs)."""
        train = self.splits.train
        return prefix_sharing(train) if train and isinstance(train[0], TokenizedExample) else None

    def rows_to_fill(self, *, packing: bool, max_length: int) -> int:
        """The most rows one micro-batch of the training split can fill, where the planner caps an `auto` micro-batch
        (plan/candidates.micro_batch_choices): its examples or pairs; packed, the `max_length` rows its examples pack
        into (a bigger packed micro-batch holds the same examples in one row)."""
        train = self.splits.train
        if not packing or not train or not isinstance(train[0], TokenizedExample):
            return len(train)
        return len(pack_best_fit([len(example.input_ids) for example in train], max_length))

    @property
    def pair_layout(self) -> PairLayout | None:
        """What each preference pair puts in a shared-prefix micro-batch (None for SFT data); without the data order,
        which training/batches.run_pair_layout adds for the planner."""
        train = self.splits.train
        return pair_layout(train) if train and isinstance(train[0], PreferenceExample) else None


def example_length(example: TokenizedExample | PreferenceExample) -> int:
    """Tokens of an example's row; of a preference pair, of its longer row (what a padded batch is padded to)."""
    if isinstance(example, PreferenceExample):
        return max(len(example.chosen.input_ids), len(example.rejected.input_ids))
    return len(example.input_ids)


def read_train_conversations(config: RunConfig, tokenizer, *, action: str | None = None,
                             ) -> tuple[list[Conversation], DataReport]:
    """All conversations of the configured train files (the one place train files are read), checked like
    `lorakit data check`: errors and privacy findings raise a DataError here, before the model is loaded.
    Preference pairs are read as their chosen conversations (prompt + chosen answer). `action`: what a broken
    file's DataError says happened (by default, that training did not start; `lorakit eval` reads them too)."""
    if config.training.method != "sft":
        pairs, report = read_preference_pairs(config, tokenizer, action=action or "preference training did not start")
        return [pair.conversations()[0] for pair in pairs], report
    return load_checked_conversations(config.data, tokenizer, config.model.max_length,
                                      action=action or "training did not start")


def _tokenize(conversations: list[Conversation], tokenizer, config: RunConfig) -> list[TokenizedExample]:
    """render_conversation for each, batched and cached on disk (keyed by data, tokenizer, template, prompt)."""
    return render_cached(conversations, tokenizer, config.data.system_prompt, config.model.max_length)


def _prepare_preferences(config: RunConfig, tokenizer, action: str) -> PreparedData:
    """Pairs split as their chosen conversations are (the split `lorakit eval` recomputes); train: the pairs
    rendered, validation and test: the chosen answers rendered as SFT examples."""
    pairs, report = read_preference_pairs(config, tokenizer, action=action)
    chosen = [pair.conversations()[0] for pair in pairs]
    pair_of = {id(conversation): pair for conversation, pair in zip(chosen, pairs)}
    by_split = split_conversations(chosen, config.data.validation_split, config.data.test_split, config.seed)
    train = render_preferences([pair_of[id(c)] for c in by_split.train], tokenizer, config.data.system_prompt,
                               config.model.max_length)
    held_out = {name: _tokenize(getattr(by_split, name), tokenizer, config) for name in ("validation", "test")}
    truncated = sum(e.chosen.truncated or e.rejected.truncated for e in train) + sum(
        e.truncated for examples in held_out.values() for e in examples)
    return PreparedData(splits=Splits(train=train, **held_out), data_sha256=report.data_sha256, truncated=truncated,
                        without_targets=0, notes=report.manifest_notes())


def prepare_data(config: RunConfig, tokenizer, *, action: str | None = None) -> PreparedData:
    """Read, split (by seed and content), render and mask; drop examples left with nothing to learn. `action`: what
    a broken file's DataError says happened (by default, that training did not start; `lorakit plan` reads the
    pairs too, `lorakit eval` the test split)."""
    if config.training.method != "sft":
        return _prepare_preferences(config, tokenizer, action or "preference training did not start")
    conversations, report = read_train_conversations(config, tokenizer, action=action)
    by_split = split_conversations(conversations, config.data.validation_split, config.data.test_split, config.seed)
    tokenized = {name: _tokenize(getattr(by_split, name), tokenizer, config) for name in ("train", "validation", "test")}
    truncated = sum(example.truncated for examples in tokenized.values() for example in examples)
    without_targets = sum(example.trained_tokens == 0 for examples in tokenized.values() for example in examples)
    if truncated:
        log.warning("%d examples are longer than model.max_length=%d tokens and were truncated", truncated, config.model.max_length)
    if without_targets:
        log.warning("%d examples have no answer tokens left after truncation and are skipped", without_targets)
    kept = {name: [e for e in examples if e.trained_tokens > 0] for name, examples in tokenized.items()}
    return PreparedData(
        splits=Splits(**kept),
        data_sha256=report.data_sha256,  # over files and saved-dataset folders alike
        truncated=truncated,
        without_targets=without_targets,
        source_urls=sorted({url for c in conversations for url in c.source_urls}),
        notes=report.manifest_notes(),
    )
