"""What a training step minimises: the one seam between a batch and its loss.

The Trainer (training/trainer.py) owns everything around the loss: micro-batches, accumulation, gradient
scaling and clipping, out-of-memory retries, numerical-fault checks, logging. An objective only turns one
collated micro-batch into a scalar loss (already divided by the step's count of what the loss averages over,
its `targets`, so that micro-batch 1 x accumulation 4 equals 4 x 1) and may report extra metrics for the logged
record. The preference objective (training/preference_objective.py: DPO/ORPO/SimPO over chosen/rejected pairs,
whose targets are pairs) is another implementation of this protocol, not a change to the Trainer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch

from lorakit.model.kernels import LOSS_POSITIONS, causal_lm_loss

if TYPE_CHECKING:
    from lorakit.training.session import TrainingSession

__all__ = ["Objective", "NextTokenObjective"]


class Objective(Protocol):
    def targets(self, batch: dict) -> int:
        """What the loss of a collated micro-batch sums over: its answer tokens (SFT), its pairs (preference)."""

    def loss(self, session: TrainingSession, batch: dict, target_tokens: int) -> torch.Tensor:
        """The micro-batch's loss on `session.device`, summed over its targets and divided by the step's
        `target_tokens` (the sum of `targets` over the step's micro-batches)."""

    def logged_metrics(self) -> dict[str, float]:
        """Metrics to add to the next logged record (then forgotten); {} when there are none."""


class NextTokenObjective:
    """Supervised fine-tuning: cross-entropy of the answer tokens, with no full-vocabulary logits
    (model/kernels.py); under fsdp the FSDP2 root computes it (training/sharding.py)."""

    def targets(self, batch: dict) -> int:
        if "kv_index" in batch:  # a shared-prefix packed row: one (predicting position, label) pair per answer token
            return len(batch["predicted_labels"])
        return len(batch[LOSS_POSITIONS])  # the positions that predict an answer token

    def loss(self, session: TrainingSession, batch: dict, target_tokens: int) -> torch.Tensor:
        if session.sharded:
            return session.sharded_root(batch, target_tokens)
        return causal_lm_loss(session.model, batch, num_items_in_batch=target_tokens)

    def logged_metrics(self) -> dict[str, float]:
        return {}
