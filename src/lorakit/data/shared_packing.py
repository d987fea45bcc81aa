"""Packed SFT micro-batches with the examples' shared prefix computed once: `[S X1][X2]...[Xn]`.

lorakit renders every example with the same system prompt (the default safety prompt: ~100 tokens, over a third of
a typical medical Q&A example), so a packed micro-batch of n examples would compute those tokens n times. Under
causal attention their hidden states are the same in every example, so one copy serves all of them: the bin's
*root* example is laid out whole, and every other example keeps only what follows its longest common prefix with
the root, attending to the root's prefix and then causally to itself (data/shared_prefix.py's generic layout,
model/attention.py's `lorakit_varlen`). The loss reads each answer token's prediction from the flat position of
the token before it, which may be inside the root's prefix; it is the packed loss and gradients up to float order.

The root is the example that shares the most tokens with the others (ties: the earliest in the bin): found from
the rows sorted lexicographically (O(n log n) row comparisons per bin), where the common prefix of two rows is the
minimum of the adjacent common prefixes between them, and each row's sum of those minima takes O(n) in all.

`PrefixSharing` is what the memory planner needs before any bin exists: an upper bound on the positions a bin of
a given capacity computes (model/plan/memory.py counts positions and gathered keys, not the bin's capacity).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lorakit.data.packing import pack_best_fit
from lorakit.data.render import TokenizedExample
from lorakit.data.shared_prefix import collate_shared_prefix, common_prefix_length

__all__ = ["sharing_root", "shared_layout_order", "collate_packed_shared", "PrefixSharing", "prefix_sharing"]


def sharing_root(rows: Sequence[Sequence[int]]) -> int:
    """The index of the row whose common prefixes with all the other rows sum highest (the earliest on a tie).

    >>> sharing_root([[1, 9], [1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 7]])
    1
    >>> sharing_root([[5], [6]])
    0
    """
    order = sorted(range(len(rows)), key=lambda i: (list(rows[i]), i))
    adjacent = [common_prefix_length(rows[a], rows[b]) for a, b in zip(order, order[1:])]
    before = _running_minimum_sums(adjacent)  # before[p]: sum over the rows sorted before place p
    after = _running_minimum_sums(adjacent[::-1])[::-1]  # after[p]: sum over the rows sorted after it
    best, best_total = 0, -1
    for place, index in enumerate(order):
        total = before[place] + after[place]
        if total > best_total or (total == best_total and index < best):
            best, best_total = index, total
    return best


def _running_minimum_sums(adjacent: Sequence[int]) -> list[int]:
    """sums[p] = sum over q < p of min(adjacent[q:p]), for p in 0..len(adjacent): in sorted rows, the common prefixes
    of row p with every row before it. O(n) with a stack of (value, how many q it is the minimum for), where a
    direct sum is O(n^2) per bin, on the collate thread.

    >>> _running_minimum_sums([3, 1, 2])  # row 2: min(3, 1) + 1; row 3: min(3, 1, 2) + min(1, 2) + 2
    [0, 3, 2, 4]
    """
    sums, stack, total = [0], [], 0
    for value in adjacent:
        count = 1
        while stack and stack[-1][0] >= value:  # earlier starts whose minimum this value now lowers
            lowered, lowered_count = stack.pop()
            total -= lowered * lowered_count
            count += lowered_count
        stack.append((value, count))
        total += value * count
        sums.append(total)
    return sums


def shared_layout_order(rows: Sequence[Sequence[int]]) -> list[int]:
    """The bin's examples in layout order: the root first, the others in their bin order.

    >>> shared_layout_order([[1, 9], [1, 2, 3, 4], [1, 2, 3, 5]])
    [1, 0, 2]
    """
    root = sharing_root(rows)
    return [root] + [i for i in range(len(rows)) if i != root]


def collate_packed_shared(examples: Sequence[TokenizedExample]) -> dict:
    """One flat row of a packed bin with every example's common prefix with the root computed once.

    Holds the same examples, labels and real tokens as `collate_packed(examples)` (each example's first token
    predicts nothing, as there); see data/shared_prefix.collate_shared_prefix for the keys.

    >>> a = TokenizedExample([1, 2, 3, 4], [-100, -100, 3, 4])
    >>> b = TokenizedExample([1, 2, 5], [-100, -100, 5])
    >>> batch = collate_packed_shared([b, a])  # a shares 2 tokens with b and b 2 with a: the earliest, b, is root
    >>> batch["input_ids"].tolist(), batch["position_ids"].tolist(), batch["kv_index"].tolist()
    ([[1, 2, 5, 3, 4]], [[0, 1, 2, 2, 3]], [0, 1, 2, 0, 1, 3, 4])
    >>> batch["predicting_positions"].tolist(), batch["predicted_labels"].tolist(), batch["row_tokens"]
    ([1, 1, 3], [5, 3, 4], 7)
    """
    order = shared_layout_order([example.input_ids for example in examples])
    return collate_shared_prefix([examples[i] for i in order], [None] + [0] * (len(order) - 1))


@dataclass(frozen=True)
class PrefixSharing:
    """The training examples' lengths and, per example, its common prefix with one anchor example (the first).

    Any two examples share at least the smaller of their anchor prefixes, so a bin whose root is chosen by
    `sharing_root` computes at most sum(length - anchor prefix) + the largest anchor prefix in the bin."""

    lengths: tuple[int, ...]
    anchor_prefixes: tuple[int, ...]

    def bin_positions(self, capacity_tokens: int, packed_as: int | None = None) -> int:
        """The most positions any packed bin of `capacity_tokens` computes (the bins lorakit's packer makes), or with
        `packed_as` (a run that packed bins of that many tokens and, after an out-of-memory error, cuts each into
        bins of `capacity_tokens`: plan/micro_batches.split_into_micro_batches) of those pieces.

        >>> sharing = PrefixSharing(lengths=(4, 3, 6), anchor_prefixes=(2, 2, 1))
        >>> sharing.bin_positions(8), sharing.bin_positions(13)  # bins [6] and [4, 3]; then one bin of all three
        (6, 10)
        >>> sharing.bin_positions(8, packed_as=13)  # the bin of all three cut into [6] and [4, 3]
        6
        """
        bins = pack_best_fit(self.lengths, max(capacity_tokens, packed_as or 0))
        if packed_as is not None and capacity_tokens < packed_as:  # as split_into_micro_batches cuts them
            bins = [[group[j] for j in piece] for group in bins
                    for piece in pack_best_fit([self.lengths[i] for i in group], capacity_tokens)]
        return max((sum(self.lengths[i] - self.anchor_prefixes[i] for i in group)
                    + max(self.anchor_prefixes[i] for i in group) for group in bins), default=0)


def prefix_sharing(examples: Sequence[TokenizedExample]) -> PrefixSharing | None:
    """The planner's summary of `examples` (None without examples).

    >>> prefix_sharing([TokenizedExample([1, 2, 3], [1, 2, 3]), TokenizedExample([1, 2, 5, 6], [1, 2, 5, 6])])
    PrefixSharing(lengths=(3, 4), anchor_prefixes=(3, 2))
    """
    if not examples:
        return None
    anchor = examples[0].input_ids
    return PrefixSharing(tuple(len(e.input_ids) for e in examples),
                         tuple(common_prefix_length(anchor, e.input_ids) for e in examples))
