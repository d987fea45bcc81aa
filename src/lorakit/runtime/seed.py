"""One seed for python, numpy and torch, so runs and splits are reproducible."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch

__all__ = ["seed_everything", "micro_batch_seed"]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def micro_batch_seed(seed: int, step: int, index: int) -> int:
    """The torch seed of one micro-batch's random draws (dropout, NEFTune noise): a function of the run seed,
    the optimizer step and the micro-batch's place in it, so neither the process that runs it (data
    parallel) nor a resume can change them.

    >>> micro_batch_seed(7, 3, 1) == micro_batch_seed(7, 3, 1) != micro_batch_seed(7, 3, 2)
    True
    >>> 0 <= micro_batch_seed(2**40, 10**9, 99) < 2**63
    True
    """
    digest = hashlib.sha256(f"{seed}:{step}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % 2**63
