"""A torchrun entry point for test_data_parallel: `lorakit ARGS` in which rank 1 alone meets a fault at
optimizer step 3 (rank 0 runs normally), to show that one rank's fault is every rank's.

LORAKIT_TEST_FAULT=nan: a NaN loss at step 3. LORAKIT_TEST_FAULT=oom: an out-of-memory error in the first
attempt of step 3 (the retry with a halved micro-batch runs normally)."""

import os
import sys

import torch

from lorakit.cli.app import run_cli
from lorakit.training import loop

FAULT_STEP = 3
_current = {"step": 0, "raised": False}
_real_train_step, _real_loss = loop._train_step, loop.causal_lm_loss


def _train_step(session, groups, params, optimizer, scheduler, scaler, step, prepare_next=None):
    _current["step"] = step
    return _real_train_step(session, groups, params, optimizer, scheduler, scaler, step, prepare_next)


def _loss(model, batch, num_items_in_batch=None):
    loss = _real_loss(model, batch, num_items_in_batch=num_items_in_batch)
    if os.environ["RANK"] != "1" or _current["step"] != FAULT_STEP:
        return loss
    if os.environ["LORAKIT_TEST_FAULT"] == "nan":
        return loss + float("nan")
    if not _current["raised"]:
        _current["raised"] = True
        raise torch.OutOfMemoryError("CUDA out of memory (simulated on rank 1)")
    return loss


loop._train_step, loop.causal_lm_loss = _train_step, _loss
sys.exit(run_cli(sys.argv[1:]))
