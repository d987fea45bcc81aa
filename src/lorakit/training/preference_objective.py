"""Preference tuning as the Trainer's objective: a micro-batch of chosen/rejected pairs -> DPO, ORPO or SimPO loss.

The Trainer divides by the step's targets; here a target is a pair, so each micro-batch contributes the sum of
its pairs' losses over the step's pair count, and micro-batch 1 x accumulation 4 equals 4 x 1 for DPO and
SimPO (ORPO's NLL term is TRL's token mean within a micro-batch). The logged metrics are the reward margin and
accuracy of every pair seen since the last logged record: the numbers that say whether preference tuning is
separating the answers. (Validation and test loss stay the Trainer's: the next-token loss of the held-out
pairs' chosen answers, training/dataset.py.)
"""

from __future__ import annotations

import torch

from lorakit.config import TrainingConfig
from lorakit.model.kernels import LOSS_POSITIONS
from lorakit.training.preference_loss import PreferenceLoss, batch_rows, preference_loss

__all__ = ["PreferenceObjective", "REWARD_METRICS"]

REWARD_METRICS = ("rewards_chosen", "rewards_rejected", "rewards_margin", "rewards_accuracy")


class PreferenceObjective:
    def __init__(self, training: TrainingConfig):
        assert training.method != "sft", "SFT is the next-token objective"
        self.method, self.beta, self.simpo_gamma = training.method, training.beta, training.simpo_gamma
        self._sums = dict.fromkeys(REWARD_METRICS, 0.0)
        self._pairs = 0

    @staticmethod
    def targets(batch: dict) -> int:
        """Pairs in a collated micro-batch (its rows are the chosen answers, then the rejected ones)."""
        return batch_rows(batch) // 2

    def _pair_loss(self, model, batch: dict) -> PreferenceLoss:
        return preference_loss(model, {k: v for k, v in batch.items() if k != LOSS_POSITIONS},
                               self.method, self.beta, self.simpo_gamma)

    def loss(self, session, batch: dict, target_pairs: int) -> torch.Tensor:
        """The micro-batch's mean pair loss, weighted by its share of the step's pairs."""
        result = self._pair_loss(session.model, batch)
        self._record(result)
        return result.loss * (self.targets(batch) / target_pairs)

    def _record(self, result: PreferenceLoss) -> None:
        pairs = result.chosen_rewards.numel()
        for name, value in result.metrics().items():
            self._sums[name] += value * pairs
        self._pairs += pairs

    def logged_metrics(self) -> dict[str, float]:
        """Mean rewards, margin and accuracy over the pairs since the last call (then reset)."""
        if not self._pairs:
            return {}
        means = {name: total / self._pairs for name, total in self._sums.items()}
        self._sums, self._pairs = dict.fromkeys(REWARD_METRICS, 0.0), 0
        return means
