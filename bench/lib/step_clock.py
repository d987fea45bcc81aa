"""Wall time of each optimizer step of a transformers Trainer (TRL's trainers are ones), synchronized with the GPU so
a step's kernels count in its own time, not the next step's."""

from __future__ import annotations

import time


def step_clock(step_seconds: list[float], cuda: bool):
    """A TrainerCallback that appends each step's seconds to `step_seconds`."""
    import torch
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            step_seconds.append(time.perf_counter() - self.start)

    return StepClock()
