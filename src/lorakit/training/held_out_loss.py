"""Held-out loss: cross-entropy per supervised (answer) token over a whole split, and its perplexity."""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch

from lorakit.data.collate import collate_padded
from lorakit.data.masking import IGNORE_INDEX
from lorakit.data.render import TokenizedExample
from lorakit.model.kernels import causal_lm_loss
from lorakit.runtime.distributed import Ranks

__all__ = ["split_loss", "split_loss_sums", "perplexity"]


def split_loss(
    model, examples: list[TokenizedExample], *, batch_size: int, pad_token_id: int, autocast_dtype: torch.dtype | None = None
) -> float | None:
    """Token-weighted mean loss (not a mean of batch means, which would over-weight short batches)."""
    if not examples:
        return None
    total_loss, total_tokens = split_loss_sums(model, examples, batch_size=batch_size, pad_token_id=pad_token_id,
                                               autocast_dtype=autocast_dtype)
    return total_loss / total_tokens if total_tokens else None


@torch.no_grad()
def split_loss_sums(
    model, examples: list[TokenizedExample], *, batch_size: int, pad_token_id: int,
    autocast_dtype: torch.dtype | None = None, ranks: Ranks = Ranks(), sharded: bool = False,
) -> tuple[float, int]:
    """(loss summed over supervised tokens, their count) over this rank's share (`ranks.share`) of the split cut
    into `batch_size` rows; the batches are the same for any number of ranks, so the sums over ranks add up to
    the one-process sums.

    `sharded`: `model` is the root of an FSDP-sharded model (training/sharding.py's ShardedLoss), whose forward is
    the loss: then every rank runs the same number of passes (each gathers weights in a collective), a rank
    without a batch of its own re-running the first and discarding the result."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_loss, total_tokens = 0.0, 0
    context = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    starts = list(range(0, len(examples), batch_size))
    mine = ranks.share_in_lockstep(starts) if sharded else [(True, start) for start in ranks.share(starts)]
    try:
        for real, start in mine:
            batch = collate_padded(examples[start : start + batch_size], pad_token_id)
            tokens = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            if tokens == 0 and not sharded:
                continue
            batch = {k: v.to(device) for k, v in batch.items()}
            with context:  # no [tokens, vocab] logits
                loss = model(batch, max(tokens, 1)) if sharded else causal_lm_loss(model, batch, num_items_in_batch=tokens)
            if real:
                total_loss += float(loss) * tokens
                total_tokens += tokens
    finally:
        model.train(was_training)
    return total_loss, total_tokens


def perplexity(loss: float | None) -> float | None:
    """exp(loss), capped to avoid overflow on a diverged model.

    >>> round(perplexity(math.log(4.0)), 6)
    4.0
    """
    return None if loss is None else math.exp(min(loss, 50.0))
