"""Predict peak GPU memory of a LoRA/QLoRA training step from the model's config.json alone, and pick the
fastest settings that fit a GPU.

The estimate counts what PyTorch keeps alive at the peak of a step (`torch.cuda.max_memory_allocated`), for
lorakit's own training path: frozen base weights (nf4 with double quantization, or bf16/fp16), fp32 LoRA
weights + gradients + AdamW moments, the activations autograd saves for backward in each decoder layer
(all of them, or only the layer input for checkpointed layers), one layer's recompute and gradients during
backward, and the fused linear cross-entropy (no [tokens, vocab] logits). Every term is in `MemoryEstimate`,
so a wrong prediction shows which term was wrong. CUDA's own context is not allocated through PyTorch; the
fit check adds it separately (`CUDA_CONTEXT_BYTES`), and the allocator's slack on top of the allocated peak
(`ALLOCATOR_SLACK`, for lorakit's expandable-segments allocator: runtime/device.py).

The model's numbers come from plan/model_shape.py; the search over settings that fit, and the speed model that
ranks them, are plan/candidates.py.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from lorakit.model.tiled_mlp import mlp_chunk_tokens
from lorakit.plan.attention_memory import attention_kernel_bytes, kv_width, padding_mask
from lorakit.plan.host_memory import (
    CHUNK_LOGIT_ELEMENTS,
    PROCESS_BASELINE_BYTES,
    cpu_loss_bytes,
    heap_fragmentation_bytes,
)
from lorakit.plan.model_shape import ModelShape  # re-exported: the planner's callers take it with the estimate

__all__ = [
    "GIB",
    "CUDA_CONTEXT_BYTES",
    "ModelShape",
    "TrainSettings",
    "MemoryEstimate",
    "estimate_peak_memory",
    "layer_activation_bytes",
    "checkpointing_text",
    "logit_chunk_bytes",
]

GIB = 1024**3
# CUDA context + cuBLAS/cuDNN handles, outside PyTorch's allocator: 0.74 GiB measured on an H100 with CUDA 13.
CUDA_CONTEXT_BYTES = int(0.75 * GIB)
# What PyTorch's caching allocator reserves on top of the allocated peak. With its default fixed-size segments
# fragmentation took 4-24% on the benchmark's rows (bench/results; b8n: 5.90 GiB allocated, 7.23 reserved), so
# the fit check kept 20% free and an 8 GB card went a quarter unused. lorakit trains with expandable segments
# (runtime/device.py), which grow one mapping instead of caching odd-sized blocks; 8% is an assumption from
# that design (rounding to 2 MiB pages, blocks freed but not yet reused) until bench/oom_real.py measures it.
ALLOCATOR_SLACK = 0.08
# nf4: 4 bits per weight + one 8-bit absmax per 64 weights + one fp32 scale per 256 absmax blocks (double quant).
NF4_BYTES_PER_PARAM = 0.5 + 1 / 64 + 4 / (64 * 256)
# fp32 LoRA weight, its gradient, AdamW's two moments.
LORA_STATE_BYTES_PER_PARAM = 16
_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj")
_MLP = ("gate_proj", "up_proj", "gate_up_proj", "down_proj")


@dataclass(frozen=True)
class TrainSettings:
    """What a training step's memory depends on, besides the model."""

    quantization: Literal["nf4", "none"]
    dtype_bytes: int  # compute/storage dtype of frozen weights and activations: 2 (bf16/fp16) or 4 (fp32)
    lora_rank: int
    lora_targets: tuple[str, ...] | Literal["all-linear"]
    lora_dropout: bool
    tokens_per_micro_batch: int  # micro-batch x max_length; with packing, the token budget of one packed row
    checkpointed_layers: int = 0  # how many decoder layers are checkpointed (the first ones); 0 = none
    offload_activations: bool = False  # keep checkpointed layer inputs in pinned CPU memory (all layers checkpointed)
    fused_kernels: bool = True  # liger RMSNorm/RoPE/SwiGLU (CUDA); False: the model's own PyTorch modules
    kv_expanded: bool = True  # attention keeps k/v repeated to every query head (no native GQA in varlen flash)
    mask_bytes: int = 1  # bytes per element of a dropout mask: 1 on CUDA (bool); the dtype's size on CPU
    dora: bool = False  # lora.use_dora: a magnitude per output feature, two more saved outputs per adapted layer
    on_cpu: bool = False  # CPU training: predict the process's peak resident set (plan/host_memory.py)
    tiled_mlp: bool = False  # MLPs run in sequence chunks (model/tiled_mlp.py; all layers checkpointed)
    # Keys and values attention keeps per query token: 1, or more in a shared-prefix preference batch, where each
    # rejected row gathers its pair's prefix again (data/preference_batch.py's PairLayout).
    keys_per_token: float = 1.0
    # nf4: the first n decoder layers' frozen weights also kept dequantized for the run (plan/dequantized.py)
    dequantized_layers: int = 0
    # Preference losses score answers through their own chunked LM head (training/preference_loss.py), whose fp32
    # logits chunks live beside the saved activations (`logit_chunk_bytes`).
    chunked_head: bool = False
    # Padded batches on CUDA (no packing; preference pairs without shared prefixes) run transformers' sdpa under a
    # padding mask, not lorakit_varlen: the length of their rows, which the mask spans per query (`padding_mask`).
    # 0: lorakit_varlen, or CPU training, whose counts tests/plan/test_memory_cpu.py measures.
    padded_row_tokens: int = 0
    # Under that mask transformers repeats k/v to every query head (model/attention.padded_sdpa_repeats_kv_heads).
    masked_kv_expanded: bool = True


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    lora_states: int
    saved_activations: int
    backward_working: int
    loss: int
    dequantize_buffer: int
    process: int = 0  # on CPU: Python, PyTorch and the libraries themselves (on CUDA outside the allocator)
    heap_fragmentation: int = 0  # on CPU: freed heap that the process keeps resident
    dequantized_weights: int = 0  # nf4 weights also kept dequantized (plan/dequantized.py), on top of the 4-bit ones
    # The loss's tensors and a layer's backward working set are never alive together: with every layer's input
    # offloaded nothing of the forward pass is left beside the loss, and its tensors are freed before any layer's
    # backward. The peak counts the larger of the two (at 16k tokens the sum over-predicted the H100 by 5.1%).
    loss_apart: bool = False

    @property
    def peak_allocated(self) -> int:
        """On CUDA the allocator's peak (`torch.cuda.max_memory_allocated`); on CPU the process's peak RSS."""
        overlap = min(self.loss, self.backward_working) if self.loss_apart else 0
        return (self.weights + self.lora_states + self.saved_activations + self.backward_working + self.loss
                - overlap + self.dequantize_buffer + self.process + self.heap_fragmentation + self.dequantized_weights)

    def peak_on_gpu(self) -> int:
        """What the GPU must have free: allocated peak + allocator slack + CUDA context."""
        return int(self.peak_allocated * (1 + ALLOCATOR_SLACK)) + CUDA_CONTEXT_BYTES

    def rows(self) -> list[tuple[str, float]]:
        """(term, GiB) for display."""
        terms = ("weights", "lora_states", "saved_activations", "backward_working", "loss", "dequantize_buffer",
                 "process", "heap_fragmentation")
        rows = [(term, getattr(self, term) / GIB) for term in terms]
        if self.dequantized_weights:
            rows.append(("dequantized_weights", self.dequantized_weights / GIB))
        if self.loss_apart:
            rows.append(("loss apart from backward_working", -min(self.loss, self.backward_working) / GIB))
        return rows + [("peak_allocated", self.peak_allocated / GIB)]


def _adapted(shape: ModelShape, targets: tuple[str, ...] | str) -> dict[str, tuple[int, int]]:
    linears = shape.linears()
    if targets == "all-linear":
        return linears
    return {name: dims for name, dims in linears.items() if name in targets}


def lora_parameter_count(shape: ModelShape, settings: TrainSettings) -> int:
    adapted = _adapted(shape, settings.lora_targets).values()
    magnitudes = sum(fan_out for _, fan_out in adapted) if settings.dora else 0  # DoRA: one per output feature
    return shape.layers * (sum(settings.lora_rank * (a + b) for a, b in adapted) + magnitudes)


def dora_transient_bytes(shape: ModelShape, settings: TrainSettings) -> int:
    """peft's DoRA rebuilds each adapted layer's full weight in every forward (B @ A via an identity matrix of the
    layer's fan-in, then W + s * BA for the norm), in the adapters' fp32: the largest layer's set, then freed."""
    if not settings.dora:
        return 0
    return max((fan_in * fan_in + 2 * fan_in * fan_out) * 4
               for fan_in, fan_out in _adapted(shape, settings.lora_targets).values())


def _adapted_bytes(shape: ModelShape, settings: TrainSettings, names: tuple[str, ...]) -> int:
    """Per token, what the LoRA layers among `names` keep for backward: the lora_A output; a dropout mask and the
    dropped copy of the input, or (without dropout) the input itself, once per distinct input; DoRA's outputs."""
    b, d, i = settings.dtype_bytes, shape.hidden, shape.intermediate
    adapted = {name: dims for name, dims in _adapted(shape, settings.lora_targets).items() if name in names}
    # Frozen layers (bf16, and bitsandbytes' nf4 as measured) keep no input; attn_out is already kept by attention.
    inputs = {"norm1": d, "attn_out": 0, "norm2": d, "act": i}
    consumer = {"q_proj": "norm1", "k_proj": "norm1", "v_proj": "norm1", "qkv_proj": "norm1", "o_proj": "attn_out",
                "gate_proj": "norm2", "up_proj": "norm2", "gate_up_proj": "norm2", "down_proj": "act"}
    total, kept = 0, set()
    for name, (fan_in, _) in adapted.items():
        total += settings.lora_rank * b  # lora_A output, kept by lora_B
        if settings.lora_dropout:
            total += fan_in * (settings.mask_bytes + b)
        else:
            kept.add(consumer[name])
    total += sum(inputs[name] for name in kept) * b
    if settings.dora:  # the magnitude's gradient needs the base and the LoRA outputs (measured on CPU, exact)
        total += sum(2 * fan_out * b for _, fan_out in adapted.values())
    return total


def mlp_activation_bytes(shape: ModelShape, settings: TrainSettings) -> int:
    """Bytes per token that autograd saves in one untiled MLP: SwiGLU's gate and up (liger; PyTorch's also keeps
    silu(gate)) and its LoRA layers' inputs. A tiled MLP keeps these for one chunk at a time."""
    b, i = settings.dtype_bytes, shape.intermediate
    return (2 * i if settings.fused_kernels else 3 * i) * b + _adapted_bytes(shape, settings, _MLP)


def layer_activation_bytes(shape: ModelShape, settings: TrainSettings) -> int:
    """Bytes per token that autograd saves in one decoder layer that is not checkpointed.

    Counted tensor by tensor for lorakit's path (see tests/plan/test_memory.py, which measures the plain
    PyTorch path on CPU with saved-tensor hooks); padded rows on CUDA (`padding_mask`) run sdpa under a mask, which
    keeps the same tensors with k/v repeated where transformers repeats them, and the mask.
    """
    b, d = settings.dtype_bytes, shape.hidden
    # RMSNorm x2: liger keeps its input (the residual stream); PyTorch's keeps an fp32 copy of it.
    total = 2 * d * (b if settings.fused_kernels else 4)
    total += attention_kernel_bytes(shape, settings) + _adapted_bytes(shape, settings, _ATTENTION)
    # A tiled MLP keeps only its input (the second norm's output) for the whole sequence.
    return total + (d * b if settings.tiled_mlp else mlp_activation_bytes(shape, settings))


def tiled_backward_bytes(shape: ModelShape, settings: TrainSettings, per_layer: int) -> int:
    """A checkpointed layer's backward with a tiled MLP (model/tiled_mlp.py): the larger of two moments.
    - The MLP's backward: the layer's recomputed activations, the incoming and the MLP input's gradients, and one
      chunk's MLP activations and gradients (gate-up's and the activated output's, the input's).
    - Attention's backward, once the MLP's input and the second norm's are freed: the residual's and the attention
      output's gradients, and flash attention's: dq, its fp32 accumulator, k/v gradients expanded to every query
      head, then summed per k/v head. At 32k tokens of Phi-4-mini this one is the larger."""
    b, tokens, d, i = settings.dtype_bytes, settings.tokens_per_micro_batch, shape.hidden, shape.intermediate
    q, kv = shape.heads * shape.head_dim, kv_width(shape, settings)
    chunk = min(tokens, mlp_chunk_tokens(i, b))
    mlp = tokens * (per_layer + 2 * d * b) + chunk * (mlp_activation_bytes(shape, settings) + (3 * i + d) * b)
    attention = tokens * (per_layer - 2 * d * b + round((d + 4 * q + 2 * kv * settings.keys_per_token) * b) + 4 * q)
    return max(mlp, attention)


def logit_chunk_bytes(tokens: int, vocab: int) -> int:
    """The preference head's transient (training/preference_loss._ChunkedTokenLogps) at its largest, in the backward
    pass that starts while every saved activation is alive: one chunk's bf16 logits made fp32, their softmax beside
    them, and its bf16 copy: 10 bytes per logit (the forward's fp32 logits and logsumexp's temporary take 8): 0.63 GiB
    at Phi-4-mini's vocabulary. The session-10 H100 rows (bench/preference_plan_check.py) held 0.52 and 0.53 GiB
    more than a prediction without it.

    >>> logit_chunk_bytes(100, 1000), logit_chunk_bytes(10**6, 200_064) // 2**20
    (1000000, 639)
    """
    return 10 * min(tokens, max(1, CHUNK_LOGIT_ELEMENTS // vocab)) * vocab


def checkpointing_text(checkpointed_layers: int, layers: int, offload: bool = False, tiled_mlp: bool = False) -> str:
    """How a plan names its checkpointing.

    >>> checkpointing_text(0, 32), checkpointing_text(12, 32), checkpointing_text(32, 32, offload=True)
    ('none', '12 of 32 layers', 'all 32 layers, offloaded to CPU')
    >>> checkpointing_text(32, 32, offload=True, tiled_mlp=True)
    'all 32 layers, offloaded to CPU, MLP in sequence chunks'
    """
    text = "none" if not checkpointed_layers else (
        f"all {layers} layers" if checkpointed_layers == layers else f"{checkpointed_layers} of {layers} layers")
    return text + (", offloaded to CPU" if offload else "") + (", MLP in sequence chunks" if tiled_mlp else "")


def estimate_peak_memory(shape: ModelShape, settings: TrainSettings) -> MemoryEstimate:
    b, tokens, d, i = settings.dtype_bytes, settings.tokens_per_micro_batch, shape.hidden, shape.intermediate
    linear = shape.layers * shape.linear_params_per_layer
    other = shape.embedding_params + shape.head_params + shape.layers * 2 * d + d  # embeddings, head, norms
    if settings.quantization == "nf4":
        weights = int(linear * NF4_BYTES_PER_PARAM) + other * b
        largest = max(a * c for a, c in shape.linears().values())
        dequantize = largest * b  # one linear's weight, dequantized for its matmul, then freed
    else:
        weights, dequantize = (linear + other) * b, 0
    assert settings.quantization == "nf4" or not settings.dequantized_layers, "only 4-bit weights are dequantized"
    per_layer = layer_activation_bytes(shape, settings)
    checkpointed = settings.checkpointed_layers
    assert 0 <= checkpointed <= shape.layers, f"{checkpointed} checkpointed layers of {shape.layers}"
    assert checkpointed == shape.layers or not settings.offload_activations, "offload needs every layer checkpointed"
    layer_input = d * b
    on_gpu_checkpoints = 0 if settings.offload_activations else checkpointed * layer_input
    saved = tokens * (on_gpu_checkpoints + (shape.layers - checkpointed) * per_layer + layer_input)
    # transformers' boolean padding mask, one per forward, which every checkpointed layer's recompute reads again.
    saved += tokens * settings.padded_row_tokens if padding_mask(settings) else 0
    # During backward: a layer's gradients, and a checkpointed layer's recomputed activations. Only the first
    # layers are checkpointed (model/checkpointing.py), so while any layer is not, backward frees at least one
    # layer's saved activations before the first recompute: the recompute adds to the peak only with all of them.
    gradients = (2 * i + 3 * d) * b
    working = tokens * ((per_layer if checkpointed == shape.layers else 0) + gradients)
    if settings.tiled_mlp:
        working = tiled_backward_bytes(shape, settings, per_layer)
    # Fused linear cross-entropy: final hidden states, selected rows, their gradient and one logits chunk.
    loss = tokens * d * b * 4 + (logit_chunk_bytes(tokens, shape.vocab) if settings.chunked_head else 0)
    estimate = MemoryEstimate(
        weights=weights,
        lora_states=lora_parameter_count(shape, settings) * LORA_STATE_BYTES_PER_PARAM,
        saved_activations=saved,
        backward_working=working,
        loss=loss,
        dequantize_buffer=dequantize + dora_transient_bytes(shape, settings),
        loss_apart=settings.offload_activations and not settings.on_cpu,
        # The layer's whole weights in the compute dtype. dequantize_buffer stays: layers not kept still dequantize.
        dequantized_weights=settings.dequantized_layers * shape.linear_params_per_layer * b,
    )
    if not settings.on_cpu:
        return estimate
    return replace(estimate, loss=cpu_loss_bytes(tokens, shape.vocab), process=PROCESS_BASELINE_BYTES,
                   heap_fragmentation=heap_fragmentation_bytes(saved))
