"""Which examples each optimizer step trains on: the seeded epoch order cut into micro-batches, the data
position kept in `TrainerState` (so a resume continues mid-epoch), and the next step's batches made ahead."""

from __future__ import annotations

from dataclasses import replace

from lorakit.training.batches import epoch_groups, packed_epoch_groups
from lorakit.run.checkpoints import TrainerState
from lorakit.plan.micro_batches import split_into_micro_batches
from lorakit.training.session import TrainingSession

__all__ = ["next_micro_batches", "step_pieces", "make_next_batches"]


def next_micro_batches(session: TrainingSession, state: TrainerState) -> list[list[int]]:
    """The example-index groups for one optimizer step; advances the data position in `state`."""
    cfg = session.config
    examples = session.data.splits.train

    def groups_of(epoch: int) -> list[list[int]]:  # made once per epoch (this runs twice a step: BatchesAhead)
        cache = session.epoch_groups
        if epoch not in cache:
            for older in [e for e in cache if e < epoch - 1]:  # keep the one before: a step may start there
                del cache[older]
            if cfg.training.packing:  # one micro-batch = one best-fit bin of batch_size x max_length tokens
                cache[epoch] = packed_epoch_groups(examples, cfg.training.batch_size * cfg.model.max_length, cfg.seed, epoch)
            else:
                cache[epoch] = epoch_groups(examples, cfg.training.batch_size, cfg.seed, epoch)
        return cache[epoch]

    groups = groups_of(state.epoch)
    chosen = []
    for _ in range(cfg.training.gradient_accumulation_steps):
        if state.batch_in_epoch >= len(groups):
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
            groups = groups_of(state.epoch)
        chosen.append(groups[state.batch_in_epoch])
        state.batch_in_epoch += 1
    return chosen


def step_pieces(session: TrainingSession, state: TrainerState, groups: list[list[int]]) -> list[list[int]]:
    """A step's groups cut to the micro-batch the run uses now (smaller after an out-of-memory retry)."""
    training = session.config.training
    return split_into_micro_batches(groups, state.micro_batch_size or training.batch_size, training.batch_size,
                                    examples=session.data.splits.train, packed=training.packing,
                                    max_length=session.config.model.max_length)


def make_next_batches(session: TrainingSession, state: TrainerState) -> None:
    """Collate the micro-batches of the step after `state.step + 1` into `session.ahead` (from a copy of the data
    position: `state` does not move); a step calls it while the GPU runs the backward pass."""
    if state.step + 2 <= session.config.training.max_steps:
        session.ahead.make(session, step_pieces(session, state, next_micro_batches(session, replace(state))))
