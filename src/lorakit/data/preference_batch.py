"""Preference pairs -> token ids and labels -> one padded batch of chosen rows followed by rejected rows.

Both answers are rendered by the one renderer training and chat use (`render_batch`), so each answer and its
end-of-turn token are supervised exactly as in SFT and the template's mask check covers both answers. The
batch layout is TRL's: rows [0, B) chosen, rows [B, 2B) rejected, padded to one width, so one forward
scores both halves. Where the attention takes it (`lorakit_varlen`), `collate_preferences_shared` lays the same
rows out padding-free with each pair's common prompt computed once (data/shared_prefix.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from lorakit.data.collate import collate_padded
from lorakit.data.masking import IGNORE_INDEX
from lorakit.data.preference import PreferencePair
from lorakit.data.render import TokenizedExample, render_batch
from lorakit.data.shared_prefix import collate_shared_prefix, common_prefix_length

__all__ = ["PreferenceExample", "last_answer_only", "render_preferences", "collate_preferences",
           "collate_preferences_shared", "PairLayout", "pair_layout"]


@dataclass(frozen=True)
class PreferenceExample:
    """A pair rendered: the prompt + chosen answer, and the prompt + rejected answer."""

    chosen: TokenizedExample
    rejected: TokenizedExample

    @property
    def source(self) -> str:
        return self.chosen.source

    @property
    def line(self) -> int:
        return self.chosen.line

    @property
    def tokens(self) -> int:
        """Tokens a training step processes for this pair (both sequences: what the memory plan must count)."""
        return len(self.chosen.input_ids) + len(self.rejected.input_ids)

    @property
    def shared_positions(self) -> int:
        """Positions the shared-prefix layout computes for this pair: |P| + |C| + |R|, the common prefix once.

        >>> PreferenceExample(TokenizedExample([1, 2, 3], [-100, 2, 3]), TokenizedExample([1, 4], [-100, 4])).shared_positions
        4
        """
        return self.tokens - common_prefix_length(self.chosen.input_ids, self.rejected.input_ids)


def last_answer_only(example: TokenizedExample) -> TokenizedExample:
    """The example with only its last run of supervised tokens kept: the answer being compared, not the
    assistant turns of a multi-turn prompt (which both sequences share, and which the loss must not score).

    >>> last_answer_only(TokenizedExample([1, 2, 3, 4, 5], [-100, 2, -100, 4, 5])).labels
    [-100, -100, -100, 4, 5]
    """
    labels = list(example.labels)
    end = max((i for i, label in enumerate(labels) if label != IGNORE_INDEX), default=-1) + 1
    start = end
    while start > 0 and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    kept = [IGNORE_INDEX] * start + labels[start:end] + [IGNORE_INDEX] * (len(labels) - end)
    return replace(example, labels=kept)


_WHOLE = 2**31  # a max_length no conversation reaches


def _truncated(example: TokenizedExample, max_length: int) -> TokenizedExample:
    return replace(example, input_ids=example.input_ids[:max_length], labels=example.labels[:max_length],
                   truncated=len(example.input_ids) > max_length)


def render_preferences(pairs: Sequence[PreferencePair], tokenizer, system_prompt: str,
                       max_length: int) -> list[PreferenceExample]:
    """Render every pair's two conversations, supervising the final answer of each; a DataError (file:line,
    template) if any answer, earlier turns included, cannot be masked exactly."""
    conversations = [conversation for pair in pairs for conversation in pair.conversations()]
    # Rendered whole, then cut: the last supervised run of a cut sequence could be an earlier turn's answer.
    whole = render_batch(conversations, tokenizer, system_prompt, _WHOLE)
    rendered = [_truncated(last_answer_only(example), max_length) for example in whole]
    return [PreferenceExample(rendered[i], rendered[i + 1]) for i in range(0, len(rendered), 2)]


def collate_preferences(examples: Sequence[PreferenceExample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """One right-padded batch: the chosen rows, then the rejected rows in the same order.

    >>> pair = PreferenceExample(TokenizedExample([1, 2, 3], [-100, 2, 3]), TokenizedExample([1, 4], [-100, 4]))
    >>> batch = collate_preferences([pair], 0)
    >>> batch["input_ids"].tolist(), batch["labels"].tolist(), batch["attention_mask"].tolist()
    ([[1, 2, 3], [1, 4, 0]], [[-100, 2, 3], [-100, 4, -100]], [[1, 1, 1], [1, 1, 0]])
    """
    return collate_padded([e.chosen for e in examples] + [e.rejected for e in examples], pad_token_id)


def collate_preferences_shared(examples: Sequence[PreferenceExample]) -> dict:
    """The same rows (chosen rows, then rejected rows) as one flat padding-free row in which each rejected row
    shares its pair's longest common prefix with the chosen row: `[P0 C0][P1 C1]..[R0][R1]..`.

    >>> pair = PreferenceExample(TokenizedExample([1, 2, 3], [-100, 2, 3]), TokenizedExample([1, 4], [-100, 4]))
    >>> batch = collate_preferences_shared([pair])
    >>> batch["input_ids"].tolist(), batch["kv_index"].tolist(), batch["predicting_positions"].tolist()
    ([[1, 2, 3, 4]], [0, 1, 2, 0, 3], [0, 1, 0])
    """
    count = len(examples)
    rows = [e.chosen for e in examples] + [e.rejected for e in examples]
    return collate_shared_prefix(rows, [None] * count + list(range(count)))


@dataclass(frozen=True)
class PairLayout:
    """What one pair puts in a shared-prefix micro-batch at most, for the memory planner: the computed positions
    (|P| + |C| + |R|) and the keys its attention gathers per computed position (|P| + |C| + |P| + |R| over that:
    the rejected row reads the prefix's keys again). A micro-batch of b pairs holds at most b x `positions` positions."""

    positions: int
    keys_per_position: float


def pair_layout(examples: Sequence[PreferenceExample]) -> PairLayout | None:
    """The bounds over all pairs (None without pairs).

    >>> pair_layout([PreferenceExample(TokenizedExample([1, 2, 3], [-100, 2, 3]), TokenizedExample([1, 4], [-100, 4]))])
    PairLayout(positions=4, keys_per_position=1.25)
    """
    if not examples:
        return None
    # The keys of a pair are |P| + |C| (chosen) + |P| + |R| (rejected): both rows' tokens.
    return PairLayout(max(e.shared_positions for e in examples), max(e.tokens / e.shared_positions for e in examples))
