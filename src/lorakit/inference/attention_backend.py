"""Decoding never runs PyTorch's cuDNN attention: the one SDPA backend whose cost grows with every new shape.

Why (issue 23, bench/results/serve_batching/step_profile_h100_session11): on an H100, SDPA picks the cuDNN backend
for a decoding step (`aten::_cudnn_attention_forward` in the profile), and cuDNN builds and caches an execution
graph for every new shape (every new KV length, every new batch size); graph builds cost tens to hundreds of ms
(sglang PR 4650, mlx PR 2743). A server's every step has a new length, so the rows that decoded 64 new lengths cost
~2x those that re-ran lengths already seen (80 vs 36-49 ms/step). With cuDNN excluded, SDPA falls back to its
memory-efficient (or flash, or math) kernel, which needs no per-shape setup; the answers are the same attention.

Training is untouched: lorakit's varlen attention does not go through SDPA. The switch is process-global (PyTorch
keeps the SDPA backend flags in one global context), so nested and concurrent decoders share one count and the
flag is restored only when the last of them leaves.
`LORAKIT_DISABLE=decode_without_cudnn` lets cuDNN back in, to measure what this saves (runtime/ablation.py).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from lorakit.runtime.ablation import enabled

__all__ = ["decoding_attention"]

_lock = threading.Lock()
_inside = 0  # decoders inside the context now
_before = True  # the cuDNN flag before the first of them entered


@contextmanager
def decoding_attention() -> Iterator[None]:
    """Run the model calls of a decoding step (or a whole `model.generate`) with SDPA's cuDNN backend off."""
    if not enabled("decode_without_cudnn"):
        yield
        return
    global _inside, _before
    with _lock:
        if _inside == 0:
            _before = torch.backends.cuda.cudnn_sdp_enabled()
            torch.backends.cuda.enable_cudnn_sdp(False)
        _inside += 1
    try:
        yield
    finally:
        with _lock:
            _inside -= 1
            if _inside == 0:
                torch.backends.cuda.enable_cudnn_sdp(_before)
