"""The CPU side of the memory plan: what a training process holds at its peak beyond the tensors that
`plan/memory.py` counts, so that on CPU the plan predicts the process's peak resident set (what
`resource.getrusage(...).ru_maxrss` and `/usr/bin/time -v` report).

Three terms, each measured on this code path (tests/plan/test_memory_cpu.py checks the sum against a
real `lorakit train` subprocess):
- the process itself: Python, PyTorch, transformers, peft, the tokenizer and the data;
- the loss: on CPU the chunked linear cross-entropy (model/kernels.py) holds one chunk of fp32 logits and a
  same-sized temporary of logsumexp, not the few hidden-sized rows that liger's fused kernel needs on CUDA;
- the heap: glibc serves tensors of a few MB from its heap once its dynamic mmap threshold has risen, and the
  holes that per-layer temporaries leave between saved activations are not returned to the system.
"""

from __future__ import annotations

__all__ = ["PROCESS_BASELINE_BYTES", "HEAP_FRAGMENTATION", "CHUNK_LOGIT_ELEMENTS", "cpu_loss_bytes",
           "heap_fragmentation_bytes"]

GIB = 1024**3
# Resident after importing lorakit's training stack and loading tokenizer and data, before the weights:
# 0.42-0.47 GiB measured (Python 3.11, torch 2.13 CPU, transformers 5).
PROCESS_BASELINE_BYTES = int(0.45 * GIB)
# Heap left fragmented by the forward pass, as a fraction of the activations saved for backward: 0.38-0.59
# measured on SmolLM2-135M shapes (1 to 30 layers, 256 to 2,048 tokens per micro-batch). CPU training keeps
# its gradient buffers from before the first step (runtime/host_heap.py), so later steps fragment the heap no
# more than the first: the README demo's plan says 2.6 GiB, its steps peak at 2.68 GiB (2.89 when the buffers
# were freed and re-allocated every step; bench/results/cpu_demo_memory.txt).
HEAP_FRAGMENTATION = 0.5
# model/kernels.py's and training/preference_loss.py's _CHUNK_LOGIT_ELEMENTS: fp32 logits per chunk of the CPU
# cross-entropy and of the preference head (tests keep them equal).
CHUNK_LOGIT_ELEMENTS = 64 * 1024 * 1024


def cpu_loss_bytes(tokens: int, vocab: int) -> int:
    """One chunk of fp32 logits (softmax and gradient are formed in place) plus logsumexp's temporary copy.

    >>> cpu_loss_bytes(100, 1000) == 2 * 100 * 1000 * 4
    True
    """
    chunk_tokens = min(tokens, max(1, CHUNK_LOGIT_ELEMENTS // vocab))
    return 2 * chunk_tokens * vocab * 4


def heap_fragmentation_bytes(saved_activations: int) -> int:
    return int(saved_activations * HEAP_FRAGMENTATION)
