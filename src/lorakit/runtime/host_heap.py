"""The process heap of CPU training: keep the gradients out of the activations' way, and hand freed memory
back to the system when training ends.

glibc's malloc serves the few-MB tensors of a CPU forward/backward pass from its heap (its mmap threshold
rises to their size after the first one is freed), and it can only reuse a freed stretch for a later
allocation that fits in it. Gradients allocated afresh in every step's first backward pass (`zero_grad`'s
default `set_to_none=True`) land in the holes the step's temporaries left between its saved activations,
and live until the optimizer step, so the next pieces' activations find no stretch long enough and the heap
grows: the README demo's first step peaked at 2.3 GiB RSS, four steps at 2.89. With gradient buffers
allocated once before the first forward pass and zeroed in place, 4 steps peaked at 2.68 GiB at the same CPU
time per step (bench/results/cpu_demo_memory.txt).

When training ends, the freed heap stays resident (glibc returns only its top to the system), so a later
phase of the same process adds to it: `mode: both`'s answer, which loads the run again, peaked at 2.89 GiB.
`release_freed_memory` returns it (glibc only; elsewhere it only collects garbage), and the answer peaks at
1.07 GiB (bench/results/cpu_demo_whole_command.txt).
"""

from __future__ import annotations

import ctypes
import gc
import platform
import sys
from collections.abc import Iterable

import torch

__all__ = ["allocate_gradients", "keeps_gradients_allocated", "release_freed_memory", "glibc_malloc_trim"]


def keeps_gradients_allocated(device: torch.device, sharded: bool) -> bool:
    """Whether training allocates its gradient buffers once and zeroes them in place: on CPU, unless FSDP2
    shards the model (its reduce-scatter hands each rank its gradient shards); on CUDA the caching allocator
    has no such holes, and buffers are freed after each optimizer step as usual."""
    return device.type == "cpu" and not sharded


def allocate_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Give every trainable parameter a zero gradient buffer now, before the first forward pass allocates
    activations. Backward then accumulates into it, which yields the same gradient as a fresh one (0 + g == g).

    Every LoRA A and B matrix is on every token's path, so each gets a gradient in every step, and AdamW
    updates the same parameters it would with buffers set to None."""
    for param in params:
        if param.requires_grad and param.grad is None:
            param.grad = torch.zeros_like(param)


def glibc_malloc_trim():
    """glibc's `malloc_trim`, or None where the C library is not glibc (macOS, Windows, musl)."""
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL("libc.so.6").malloc_trim


def release_freed_memory() -> None:
    """Collect unreachable objects (a peft model holds reference cycles) and return the heap pages they
    freed to the system (`malloc_trim(0)`)."""
    gc.collect()
    trim = glibc_malloc_trim()
    if trim is not None:
        trim(0)
