"""The micro-batch arithmetic: smaller micro-batches for one optimizer step, after an out-of-memory error (halve,
accumulate twice as often; plan/oom.py says when) and from the start on CPU (`cpu_micro_batch_size`).

The optimizer step keeps exactly the examples the data order gave it (its configured micro-batches are
cut into smaller pieces, never re-drawn), and the loss is normalised by the step's answer tokens, so the
effective batch and the update are unchanged; only the peak memory of each forward/backward pass drops.
"""

from __future__ import annotations

import math

from lorakit.data.packing import pack_best_fit
from lorakit.data.render import TokenizedExample

__all__ = ["CPU_MICRO_BATCH_TOKENS", "cpu_micro_batch_size", "halved", "micro_batch_in_use", "split_into_micro_batches",
           "accumulation_after_split"]


# On CPU a micro-batch's activations cost ~2 MB per token for a 135M model in fp32 (7 GiB RSS for the README
# demo's 8 x 384), while CPU matmuls are already at full speed with a few hundred rows, and smaller
# micro-batches pad less. So CPU runs cut each configured micro-batch into pieces of at most this many tokens:
# 1024 (pieces of 2 for the README demo) kept its speed (1.03x the uncut time) at 2.86 GiB; 512 (pieces of 1)
# reached 2.0 GiB but took 1.23x the time (bench/results/cpu_demo_memory.txt).
CPU_MICRO_BATCH_TOKENS = 1024


def cpu_micro_batch_size(batch_size: int, max_length: int) -> int | None:
    """The micro-batch a CPU run trains with, or None when the configured one is already small enough.

    >>> cpu_micro_batch_size(8, 384), cpu_micro_batch_size(4, 128), cpu_micro_batch_size(16, 128)
    (2, None, 8)
    """
    fitting = max(1, CPU_MICRO_BATCH_TOKENS // max_length)
    return fitting if fitting < batch_size else None


def halved(micro_batch_size: int) -> int:
    """The next micro-batch size after an out-of-memory error (rounding up, so 3 -> 2 -> 1).

    >>> [halved(n) for n in (8, 5, 3, 2)]
    [4, 3, 2, 1]
    """
    assert micro_batch_size > 1, "micro-batch 1 cannot be halved"
    return (micro_batch_size + 1) // 2


def micro_batch_in_use(state, training) -> int:
    """The micro-batch that fits: the halved one after an out-of-memory retry, or the CPU's right-sized one
    (`cpu_micro_batch_size`), else `training.batch_size`.

    Every later forward pass of the run (validation and test loss too) uses it, since the configured one
    did not fit. `state` is the TrainerState, `training` the TrainingConfig.
    """
    return state.micro_batch_size or training.batch_size


def split_into_micro_batches(
    groups: list[list[int]],
    micro_batch_size: int,
    configured_batch_size: int,
    *,
    examples: list[TokenizedExample],
    packed: bool,
    max_length: int,
) -> list[list[int]]:
    """Cut each configured micro-batch into pieces of at most `micro_batch_size` examples (packed: bins of
    `micro_batch_size * max_length` tokens). Every example stays, in its group's order of pieces.

    >>> split_into_micro_batches([[5, 1, 4], [2]], 2, 3, examples=[], packed=False, max_length=8)
    [[5, 1], [4], [2]]
    >>> split_into_micro_batches([[5, 1, 4]], 3, 3, examples=[], packed=False, max_length=8)
    [[5, 1, 4]]
    """
    if micro_batch_size >= configured_batch_size:
        return [list(group) for group in groups]
    pieces = []
    for group in groups:
        if packed:
            lengths = [len(examples[i].input_ids) for i in group]
            pieces += [[group[j] for j in bin_] for bin_ in pack_best_fit(lengths, micro_batch_size * max_length)]
        else:
            pieces += [group[i : i + micro_batch_size] for i in range(0, len(group), micro_batch_size)]
    return pieces


def accumulation_after_split(configured_accumulation: int, configured_batch_size: int, micro_batch_size: int) -> int:
    """Micro-batches per optimizer step once the micro-batch is `micro_batch_size` (padded batches).

    >>> accumulation_after_split(2, 8, 2)
    8
    """
    return configured_accumulation * math.ceil(configured_batch_size / micro_batch_size)
