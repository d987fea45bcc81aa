"""A torchrun entry point for test_data_parallel: `lorakit ARGS` in which rank 1 alone meets a fault at
optimizer step 3 (rank 0 runs normally), to show that one rank's fault is every rank's.

LORAKIT_TEST_FAULT=nan: a NaN loss at step 3. LORAKIT_TEST_FAULT=oom: an out-of-memory error in the first
attempt of step 3 (the retry with a halved micro-batch runs normally)."""

import functools
import os
import sys

import torch

from lorakit.cli.app import run_cli
from lorakit.training import loop
from lorakit.training.objective import NextTokenObjective
from lorakit.training.trainer import TrainerHooks

FAULT_STEP = 3
_current = {"step": 0, "raised": False}


class StepNumber(TrainerHooks):
    def step_starting(self, trainer, step, groups):
        _current["step"] = step


class FaultOnRank1(NextTokenObjective):
    def loss(self, session, batch, target_tokens):
        loss = super().loss(session, batch, target_tokens)
        if os.environ["RANK"] != "1" or _current["step"] != FAULT_STEP:
            return loss
        if os.environ["LORAKIT_TEST_FAULT"] == "nan":
            return loss + float("nan")
        if not _current["raised"]:
            _current["raised"] = True
            raise torch.OutOfMemoryError("CUDA out of memory (simulated on rank 1)")
        return loss


loop.train = functools.partial(loop.train, hooks=StepNumber(), objective=FaultOnRank1())  # the CLI's train, with both
sys.exit(run_cli(sys.argv[1:]))
