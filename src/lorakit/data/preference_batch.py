"""Preference pairs -> token ids and labels -> one padded batch of chosen rows followed by rejected rows.

Both answers are rendered by the one renderer training and chat use (`render_batch`), so each answer and its
end-of-turn token are supervised exactly as in SFT and the template's mask check covers both answers. The
batch layout is TRL's: rows [0, B) chosen, rows [B, 2B) rejected, padded to one width, so one forward
scores both halves. Where the attention takes it (`lorakit_varlen`), `collate_preferences_shared` lays the same
rows out padding-free with each pair's common prompt computed once (data/shared_prefix.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

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
    """The training pairs as the memory planner sees them in shared-prefix micro-batches: per pair, the positions it
    computes (|P| + |C| + |R|) and the keys its attention gathers (|P| + |C| + |P| + |R|: the rejected row reads the
    prefix's keys again, so these are both rows' tokens); and, where the run is known, its data order (`order`:
    epoch -> the pairs' indices in that epoch's order, training/batches.epoch_permutation) and how many
    micro-batches the run trains on (`micro_batches`)."""

    positions: tuple[int, ...]
    keys: tuple[int, ...]
    order: Callable[[int], Sequence[int] | torch.Tensor] | None = field(default=None, compare=False, repr=False)
    micro_batches: int = 0
    _bounds: dict = field(default_factory=dict, init=False, compare=False, repr=False)  # each copy its own
    _orders: dict = field(default_factory=dict, init=False, compare=False, repr=False)  # first epoch -> orders

    @property
    def largest_pair(self) -> int:
        """The positions of the largest pair (what one pair puts in a micro-batch at most)."""
        return max(self.positions)

    @property
    def keys_per_position(self) -> float:
        """The most keys per computed position of any pair (a bound for any micro-batch of them)."""
        return max(k / p for k, p in zip(self.keys, self.positions))

    def micro_batch(self, pairs: int, cut_from: int | None = None) -> tuple[int, int]:
        """(positions, keys) that bound every micro-batch of `pairs` pairs: the most positions of any and the most
        keys of any (a step's memory grows with both). With the run's order: over the micro-batches the run really
        trains on (`cut_from`: the run's micro-batches of that many pairs, each cut into pieces of `pairs` as
        plan/micro_batches.split_into_micro_batches cuts them after an out-of-memory error). Without: the `pairs`
        largest pairs, whatever the order (a tiny data set's order is not a sample: the bound holds for any).

        >>> layout = PairLayout(positions=(10, 40, 20, 30), keys=(15, 60, 30, 45))
        >>> layout.micro_batch(2)  # the two largest: 40 + 30 positions, 60 + 45 keys
        (70, 105)
        >>> ordered = PairLayout((10, 40, 20, 30), (15, 60, 30, 45),
        ...                      order=lambda epoch: [[0, 1, 2, 3], [3, 2, 1, 0]][epoch % 2], micro_batches=2)
        >>> ordered.micro_batch(2)  # epoch 0's micro-batches [0, 1] and [2, 3]: 50 positions each
        (50, 75)
        >>> ordered.micro_batch(1, cut_from=4)  # its micro-batch of 4 cut into pieces of one pair
        (40, 60)
        """
        if self.order is None:
            return self.micro_batch_any_order(pairs)
        key = (pairs, cut_from or pairs)
        if key not in self._bounds:  # the planner asks once per candidate and quantization
            self._bounds[key] = self._run_bound(pairs, cut_from or pairs)
        return self._bounds[key]

    def _run_bound(self, pairs: int, size: int) -> tuple[int, int]:
        """Over the run's micro-batches of `size` pairs, each cut into pieces of `pairs`: the most positions and the
        most keys of a piece. Every epoch cuts its order into the same pieces, so the epochs' orders are stacked and
        a block of them is bounded at once (a tiny data set over a long run visits thousands of epochs; one at a
        time, 20 pairs x 32,000 micro-batches took seconds); the walk stops early once both maxima reach the
        `pairs` largest pairs' sums, which no piece exceeds."""
        count = len(self.positions)
        sizes = torch.tensor([self.positions, self.keys], dtype=torch.int64)
        ceiling = torch.tensor(self.micro_batch_any_order(pairs), dtype=torch.int64)
        runs, per_epoch = max(self.micro_batches, 1), -(-count // size)
        starts, ends, group_of_piece = _epoch_pieces(count, size, pairs)
        best = torch.zeros(2, dtype=torch.int64)
        # blocks of epochs grow from _FIRST_BLOCK_EPOCHS (a tiny data set often reaches the ceiling in its first
        # epochs) to about _BLOCK_ELEMENTS pair indices; a data set larger than that is bounded one epoch at a time
        widest = max(1, _BLOCK_ELEMENTS // count)
        epochs, first, block = -(-runs // per_epoch), 0, min(_FIRST_BLOCK_EPOCHS, widest)
        while first < epochs:
            numbers = torch.arange(first, min(first + block, epochs))
            orders = self._epoch_orders(first, len(numbers))
            # index_select, not sizes[:, orders]: advanced indexing took 200x as long here (torch 2.x on CPU)
            gathered = sizes.index_select(1, orders.reshape(-1)).view(2, len(orders), count)
            sums = torch.nn.functional.pad(gathered.cumsum(2), (1, 0))  # [2, epochs, count + 1]
            pieces = sums.index_select(2, ends) - sums.index_select(2, starts)
            # the run's last epoch trains on its first micro-batches only
            trained = numbers[:, None] * per_epoch + group_of_piece[None, :] < runs
            best = torch.maximum(best, pieces.masked_fill(~trained, 0).amax((1, 2)))
            if bool((best >= ceiling).all()):
                break
            first, block = first + block, min(2 * block, widest)
        return int(best[0]), int(best[1])

    def _epoch_orders(self, first: int, count: int) -> torch.Tensor:
        """The orders of epochs first .. first + count - 1, one row each; kept (up to _CACHED_ELEMENTS) for the
        planner's next bound, which walks the same epochs (drawing an order costs more than bounding it)."""
        kept = self._orders.get(first, torch.empty(0, len(self.positions), dtype=torch.int64))
        if len(kept) < count:  # drawn on: a bound over smaller micro-batches walked fewer epochs
            drawn = [torch.as_tensor(self.order(epoch), dtype=torch.int64)[:len(self.positions)]
                     for epoch in range(first + len(kept), first + count)]
            kept = torch.cat([kept, torch.stack(drawn)])
            if (first + count) * len(self.positions) <= _CACHED_ELEMENTS:
                self._orders[first] = kept
        return kept[:count]

    def micro_batch_any_order(self, pairs: int) -> tuple[int, int]:
        """(positions, keys) of the `pairs` largest pairs: what a micro-batch of `pairs` holds at most in any order.

        >>> PairLayout(positions=(10, 40, 20, 30), keys=(15, 60, 30, 45)).micro_batch_any_order(2)
        (70, 105)
        """
        return (sum(sorted(self.positions, reverse=True)[:pairs]), sum(sorted(self.keys, reverse=True)[:pairs]))


_FIRST_BLOCK_EPOCHS = 256
_BLOCK_ELEMENTS = 1 << 20  # pair indices bounded at once (x2 sizes x 8 bytes: ~32 MiB of int64 at most)
_CACHED_ELEMENTS = 1 << 22  # epoch orders kept between bounds (32 MiB of int64 at most)


def _epoch_pieces(count: int, size: int, pairs: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where an epoch's pieces start and end in its order, and the micro-batch each belongs to: micro-batches of
    `size` (the last may be smaller), each cut into pieces of `pairs` (plan/micro_batches.split_into_micro_batches).

    >>> [t.tolist() for t in _epoch_pieces(5, 3, 2)]
    [[0, 2, 3], [2, 3, 5], [0, 0, 1]]
    """
    groups = torch.arange(0, count, size)
    starts = groups[:, None] + torch.arange(0, size, pairs)[None, :]
    ends = torch.clamp(groups + size, max=count)[:, None].expand_as(starts)
    inside = starts < ends
    group_of_piece = torch.arange(len(groups))[:, None].expand_as(starts)
    return starts[inside], torch.minimum(starts + pairs, ends)[inside], group_of_piece[inside]


def pair_layout(examples: Sequence[PreferenceExample]) -> PairLayout | None:
    """Every pair's positions and keys (None without pairs), without the run's order.

    >>> pair_layout([PreferenceExample(TokenizedExample([1, 2, 3], [-100, 2, 3]), TokenizedExample([1, 4], [-100, 4]))])
    PairLayout(positions=(4,), keys=(5,), micro_batches=0)
    """
    if not examples:
        return None
    return PairLayout(tuple(e.shared_positions for e in examples), tuple(e.tokens for e in examples))
