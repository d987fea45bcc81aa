"""What a training step minimises: the one seam between a batch and its loss.

The Trainer (training/trainer.py) owns everything around the loss: micro-batches, accumulation, gradient
scaling and clipping, out-of-memory retries, numerical-fault checks, logging. An objective only turns one
collated micro-batch into a scalar loss (already divided by the step's supervised-token count, so that
micro-batch 1 x accumulation 4 equals 4 x 1) and may report extra metrics for the logged record. A
preference objective (DPO/ORPO over chosen/rejected pairs, the reference being the model with its adapter
disabled) is another implementation of this protocol, not a change to the Trainer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch

from lorakit.model.kernels import causal_lm_loss

if TYPE_CHECKING:
    from lorakit.training.session import TrainingSession

__all__ = ["Objective", "NextTokenObjective"]


class Objective(Protocol):
    def loss(self, session: TrainingSession, batch: dict, target_tokens: int) -> torch.Tensor:
        """The micro-batch's loss on `session.device`, summed over its tokens and divided by `target_tokens`."""

    def logged_metrics(self) -> dict[str, float]:
        """Metrics to add to the next logged record (then forgotten); {} when there are none."""


class NextTokenObjective:
    """Supervised fine-tuning: cross-entropy of the answer tokens, with no full-vocabulary logits
    (model/kernels.py); under fsdp the FSDP2 root computes it (training/sharding.py)."""

    def loss(self, session: TrainingSession, batch: dict, target_tokens: int) -> torch.Tensor:
        if session.sharded:
            return session.sharded_root(batch, target_tokens)
        return causal_lm_loss(session.model, batch, num_items_in_batch=target_tokens)

    def logged_metrics(self) -> dict[str, float]:
        return {}
