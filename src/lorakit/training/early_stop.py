"""Patience on validation loss; its state is saved in every checkpoint.

While early stopping is on, the loop saves a checkpoint at every evaluation that improves the validation loss
and rotation never deletes the best one, so that when patience runs out final/ ships the best weights, not
the last ones (training/finalize.py). A run that reaches max_steps ships its last weights; its manifest
still names the best step, whose checkpoint is kept.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

__all__ = ["EarlyStopping"]


@dataclass
class EarlyStopping:
    patience: int | None
    min_delta: float = 0.0
    best_loss: float = math.inf
    best_step: int = 0
    evals_without_improvement: int = 0

    def update(self, step: int, validation_loss: float) -> bool:
        """Record one evaluation; True when training should stop.

        >>> stopper = EarlyStopping(patience=2)
        >>> [stopper.update(s, loss) for s, loss in [(1, 1.0), (2, 0.9), (3, 0.95), (4, 0.91)]]
        [False, False, False, True]
        """
        if validation_loss < self.best_loss - self.min_delta:
            self.best_loss, self.best_step, self.evals_without_improvement = validation_loss, step, 0
        else:
            self.evals_without_improvement += 1
        return self.patience is not None and self.evals_without_improvement >= self.patience

    @property
    def enabled(self) -> bool:
        return self.patience is not None

    def improved_at(self, step: int) -> bool:
        """True when the evaluation at `step` set the best validation loss so far."""
        return self.best_step == step

    def state_dict(self) -> dict:
        state = asdict(self)
        state["best_loss"] = None if math.isinf(self.best_loss) else self.best_loss
        return state

    def load_state_dict(self, state: dict) -> None:
        self.best_loss = math.inf if state["best_loss"] is None else state["best_loss"]
        self.best_step = state["best_step"]
        self.evals_without_improvement = state["evals_without_improvement"]
