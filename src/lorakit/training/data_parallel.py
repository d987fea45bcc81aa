"""Data parallelism for LoRA without a wrapper: the same optimizer step on every rank, from a share of its
micro-batches.

Every rank holds the whole dataset and derives the same data order from the seed, so each knows every
step's micro-batches and the step's supervised-token count. A rank runs forward/backward on micro-batches
rank, rank + N, ... (each loss already divided by the step's total tokens), then the LoRA gradients and the
loss are summed over ranks (`Ranks.sum_gradients_`, one flat buffer: LoRA gradients are a few MB) and
every rank takes the identical optimizer step. That is the one-process step with the same global batch
(batch_size x gradient_accumulation_steps), up to the order of floating-point additions. DDP's wrapper
would overlap the all-reduce with backward, which matters for full fine-tuning but not for LoRA's
megabytes, and it would tie gradient sync to every backward of an accumulating step.

Decisions every rank must take alike go through one collective each: an out-of-memory error on any rank
halves the micro-batch on all (`agree_on_step`), a non-finite summed loss stops all with one message,
validation loss is split over ranks and summed (`shared_split_loss`), and `agree_on_plan` refuses ranks
whose memory planner chose differently.
"""

from __future__ import annotations

import torch

from lorakit.config import RunConfig
from lorakit.errors import ConfigError
from lorakit.training.held_out_loss import split_loss_sums
from lorakit.runtime.distributed import Ranks

__all__ = ["agree_on_step", "shared_split_loss", "agree_on_plan", "NullMetricsSink", "step_share_warning"]


def agree_on_step(ranks: Ranks, loss_sum: float, tokens: int, out_of_memory: bool) -> tuple[float, int]:
    """The step's loss and token count summed over ranks; raises torch.OutOfMemoryError on every rank when
    any rank ran out of memory (so all halve together and re-run the same step)."""
    loss_sum, tokens, failed = ranks.sum([loss_sum, tokens, float(out_of_memory)])
    if failed:
        raise torch.OutOfMemoryError(f"{int(failed)} of {ranks.world_size} processes ran out of memory")
    return loss_sum, int(tokens)


def shared_split_loss(ranks: Ranks, model, examples, *, batch_size: int, pad_token_id: int,
                      autocast_dtype: torch.dtype | None, sharded: bool = False) -> float | None:
    """`split_loss` with its batches dealt round-robin to the ranks and the sums added: every rank gets the
    same value (so early-stopping decisions agree), each computing 1/N of it. `sharded`: `model` is the FSDP
    root (training/sharding.py's ShardedLoss)."""
    if not examples:
        return None
    loss_sum, tokens = split_loss_sums(model, examples, batch_size=batch_size, pad_token_id=pad_token_id,
                                       autocast_dtype=autocast_dtype, ranks=ranks, sharded=sharded)
    loss_sum, tokens = ranks.sum([loss_sum, tokens])
    return loss_sum / tokens if tokens else None


def agree_on_plan(ranks: Ranks, config: RunConfig) -> None:
    """Refuse ranks whose `auto` settings resolved differently (e.g. GPUs with different free memory): the
    micro-batch cuts the data order, so every rank must use the same."""
    training = config.training
    mine = [training.batch_size, float(training.gradient_checkpointing), float(config.model.quantization == "nf4"),
            float(training.distributed == "fsdp")]
    if ranks.agree(mine, op="min") != ranks.agree(mine, op="max"):
        raise ConfigError("training.batch_size", [
            "the memory planner chose different settings on different GPUs (batch_size, gradient_checkpointing, "
            "quantization or distributed); set training.batch_size, training.gradient_checkpointing, "
            "model.quantization and training.distributed explicitly (see `lorakit plan CONFIG`)"])


def step_share_warning(ranks: Ranks, micro_batches_per_step: int) -> str | None:
    """A warning when the step's micro-batches do not divide evenly over the processes (some then idle)."""
    if not ranks.distributed or micro_batches_per_step % ranks.world_size == 0:
        return None
    busy = min(micro_batches_per_step, ranks.world_size)
    return (f"each optimizer step has {micro_batches_per_step} micro-batches for {ranks.world_size} processes, so "
            f"{ranks.world_size - busy if busy < ranks.world_size else 'some'} wait part of every step; set "
            f"training.gradient_accumulation_steps to a multiple of {ranks.world_size} for full speed (results "
            "do not depend on it)")


class NullMetricsSink:
    """What ranks other than 0 log to: nothing (metrics.jsonl, TensorBoard and trackers are rank 0's)."""

    def write(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass
