"""The model each knowledge pass scores with: the base model, the fine-tuned model with its adapter merged into a
private copy of the weights, or either one in bfloat16 when asked.

Why merge: with the adapter left unmerged (as chat and serve run it), every one of the 7 x 30 adapted linear
layers of SmolLM2 adds two small matrix products, a scale and an add over the full activation; the fine-tuned
pass took about 1.3 times as long as with merged weights (bench/results/knowledge_speed.txt). A merged copy
(W + scale * B @ A, computed once in the model's dtype) costs what the base model costs. Merged and unmerged
scores agree within fp32 rounding, not bit for bit (measured there: how many items change their answer).

Why bfloat16 is only an option: on CPUs with AMX, bfloat16 matrix products are several times faster than
float32, but bfloat16 keeps 8 bits of mantissa, so some near-tied items choose another letter. The eval states
the precision it used (eval.json knowledge.precision) and the default stays the model's own dtype.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch

__all__ = ["Precision", "PRECISIONS", "scoring_model"]

Precision = Literal["model", "bfloat16"]
PRECISIONS: tuple[Precision, ...] = ("model", "bfloat16")


@contextmanager
def scoring_model(model, which: str, precision: Precision = "model") -> Iterator[torch.nn.Module]:
    """A model that scores as `which` ('base' or 'tuned') of a peft model with one LoRA adapter.

    'base' in the model's precision is the loaded model with its adapter switched off (no copy, exactly the
    base weights); every other case is a private copy, freed on exit, so the loaded model is never changed."""
    assert which in ("base", "tuned"), which
    if which == "base" and precision == "model":
        with model.disable_adapter():
            yield model
        return
    scoring = copy.deepcopy(model)
    scoring = scoring.merge_and_unload() if which == "tuned" else scoring.unload()
    if precision == "bfloat16":
        scoring = scoring.to(torch.bfloat16)
    scoring.eval()
    try:
        yield scoring
    finally:
        del scoring
