"""Isolated attention for packed rows: each example attends only to itself, positions restart per example.

Why a registered implementation rather than transformers' own masks: transformers 5.x builds a block-diagonal
mask from packed `position_ids` only when `attention_mask is None` AND no KV cache is in use. A model called
in training with its default `use_cache=True`, or with an all-ones attention mask, silently lets the second
example attend to the first (tests/model/test_attention.py measures a logit error of about 0.5-0.8 on a tiny
Phi-3). Flash kernels also do not read dense masks, so a mask would push SDPA onto a slower kernel.

`lorakit_varlen` reads the example boundaries (`cu_seq_lens_q`, written by data/packing.collate_packed, or
derived from `position_ids`) and runs
- on CUDA in bf16/fp16: PyTorch's variable-length flash attention (`torch.nn.attention.varlen`), one kernel
  for the whole packed row, no mask, no padding;
- elsewhere (CPU, fp32, old PyTorch): causal SDPA per example, the plain-PyTorch reference.
No mask function is registered for it, so transformers builds none.

Padded batches (no packing; preference pairs without shared prefixes) do not run it: they run the model's own
`sdpa` attention with transformers' padding mask. `padded_sdpa_repeats_kv_heads` says what that costs in memory.

Shared prefixes (data/shared_prefix.py): a batch that carries `kv_index` lets a segment attend to an earlier
segment's prefix. The keys and values are gathered (`index_select` on the token dimension; autograd scatters
their gradients back) so that segment i's keys are its parent's prefix followed by its own tokens, and
`cu_seq_lens_k` then differs from `cu_seq_lens_q`. The causal mask is aligned to the bottom right: a segment's
queries are the last tokens of its keys (flash attention's convention when seqlen_q < seqlen_k; SDPA's
`is_causal` aligns top-left there, so the reference path builds the mask itself).
"""

from __future__ import annotations

import functools
import inspect

import torch
import torch.nn.functional as F

from lorakit.model.kernels import unwrap_peft_model
from lorakit.runtime.logging import get_logger

__all__ = [
    "VARLEN_ATTENTION",
    "register_varlen_attention",
    "use_varlen_attention",
    "uses_varlen_attention",
    "varlen_attention_forward",
    "expands_kv_heads",
    "padded_sdpa_repeats_kv_heads",
]

log = get_logger("model.attention")

VARLEN_ATTENTION = "lorakit_varlen"


def register_varlen_attention() -> str:
    """Make `lorakit_varlen` a valid `attn_implementation` for every transformers model (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(VARLEN_ATTENTION, varlen_attention_forward)
    return VARLEN_ATTENTION


def use_varlen_attention(model) -> None:
    """Switch a loaded transformers model (or a peft wrapper around one) to isolated packed attention where it can
    (its attention goes through transformers' AttentionInterface); `uses_varlen_attention` says whether it did."""
    register_varlen_attention()
    base = unwrap_peft_model(model)
    base.set_attn_implementation(VARLEN_ATTENTION)
    if not uses_varlen_attention(base):  # transformers warned and kept the model's own
        return
    # Probe the flash kernel now, not in the first forward: inside a checkpointed layer the probe's own
    # autograd tensors would count as the layer's, and the recompute (probe cached) would save fewer
    # ("A different number of tensors was saved", seen on an H200 with gradient_checkpointing: true).
    _flash_varlen()


def uses_varlen_attention(model) -> bool:
    """Whether a model (or a peft wrapper around one) runs lorakit_varlen attention."""
    base = unwrap_peft_model(model)
    return base.config._attn_implementation == VARLEN_ATTENTION


def _boundaries_from_positions(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """cu_seq_lens and the longest example of a flat packed row, from positions that restart at 0."""
    flat = position_ids.reshape(-1)
    starts = torch.nonzero(flat == 0).flatten()
    cu = torch.cat([starts, flat.new_tensor([flat.numel()])]).to(torch.int32)
    return cu, int((cu[1:] - cu[:-1]).max())


@functools.cache
def _flash_varlen():
    """PyTorch's varlen flash attention, how its causal flag is spelled in this version, and whether it
    accepts fewer k/v heads than query heads (grouped-query attention) without expanding them; or None."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    parameters = inspect.signature(varlen_attn).parameters
    causal = {"is_causal": True} if "is_causal" in parameters else {"window_size": (-1, 0)}
    if "enable_gqa" in parameters:
        return varlen_attn, causal, {"enable_gqa": True}
    return varlen_attn, causal, {} if _flash_takes_grouped_heads(varlen_attn, causal) else None


def _flash_takes_grouped_heads(varlen_attn, causal: dict) -> bool:
    """PyTorch 2.11's varlen_attn has no `enable_gqa`, but the flash kernels under it handle grouped heads.
    Check once, forward and backward, against expanded heads on a tiny input; any failure means expand."""
    if not torch.cuda.is_available():
        return False
    try:
        generator = torch.Generator(device="cuda").manual_seed(0)
        q = torch.randn(24, 4, 64, device="cuda", dtype=torch.bfloat16, generator=generator, requires_grad=True)
        k, v = (torch.randn(24, 2, 64, device="cuda", dtype=torch.bfloat16, generator=generator, requires_grad=True)
                for _ in range(2))
        cu = torch.tensor([0, 10, 24], device="cuda", dtype=torch.int32)
        grouped = varlen_attn(q, k, v, cu, cu, 14, 14, **causal)
        grouped_grads = torch.autograd.grad(grouped.float().square().sum(), (q, k, v))
        expanded = varlen_attn(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), cu, cu, 14, 14, **causal)
        expanded_grads = torch.autograd.grad(expanded.float().square().sum(), (q, k, v))
        return all(torch.allclose(a.float(), b.float(), atol=2e-2, rtol=2e-2)
                   for a, b in zip((grouped, *grouped_grads), (expanded, *expanded_grads)))
    except (RuntimeError, ValueError):
        return False


def expands_kv_heads() -> bool:
    """Whether grouped-query k/v are repeated to every query head before the flash kernel."""
    found = _flash_varlen()
    return found is None or found[2] is None


@functools.cache
def padded_sdpa_repeats_kv_heads() -> bool:
    """Whether transformers' sdpa attention, given a padding mask, repeats grouped-query k/v to every query head
    before PyTorch's kernel instead of passing `enable_gqa`: then each layer keeps [tokens, heads, head_dim] keys and
    values for backward, not [tokens, kv_heads, head_dim]. transformers 5.x repeats them on CUDA whenever a mask is
    given (integrations/sdpa_attention.use_gqa_in_sdpa: PyTorch's GQA under a mask would fall back to the math
    kernel). Observed, not looked up by version: its attention function runs once on a tiny grouped-query input with
    a mask, and the keys it hands `F.scaled_dot_product_attention` are counted. Its choice reads the mask and the
    platform (XPU, MPS), not the tensors' device, so the probe runs on the GPU only where there is one."""
    try:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
    except ImportError as error:
        log.warning("cannot observe transformers' sdpa attention (%s): planning padded batches with k/v repeated "
                    "to every query head", error)
        return True
    device = "cuda" if torch.cuda.is_available() else "cpu"
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = 2, True
    query = torch.zeros(1, 4, 3, 8, device=device)
    key, value = torch.zeros(1, 2, 3, 8, device=device), torch.zeros(1, 2, 3, 8, device=device)
    mask = torch.ones(3, 3, dtype=torch.bool, device=device).tril()[None, None]
    with _KernelKeys() as seen:
        sdpa_attention_forward(module, query, key, value, mask)
    if not seen.calls:
        log.warning("transformers' sdpa attention did not call F.scaled_dot_product_attention: planning padded "
                    "batches with k/v repeated to every query head")
        return True
    heads, grouped = seen.calls[0]
    return heads == query.shape[1] and not grouped


class _KernelKeys(torch.overrides.TorchFunctionMode):
    """Records (key heads, enable_gqa) of each `F.scaled_dot_product_attention` call made inside it."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[int, bool]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            self.calls.append((args[1].shape[1], bool(kwargs.get("enable_gqa", False))))
        return func(*args, **kwargs)


def _flash_attention(query, key, value, cu_q, cu_k, max_q: int, max_k: int, scaling: float) -> torch.Tensor | None:
    """query [Tq, Hq, D], key/value [Tk, Hkv, D] -> [Tq, Hq, D] with one flash kernel; None if unavailable."""
    found = _flash_varlen()
    if found is None:
        return None
    varlen_attn, causal, grouped = found
    groups = query.shape[1] // key.shape[1]
    extra = dict(causal)
    if groups > 1:
        if grouped is None:
            key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
        else:
            extra.update(grouped)
    return varlen_attn(query, key, value, cu_q, cu_k, max_q, max_k, scale=scaling, **extra)


def _per_example_attention(query, key, value, cu_q: torch.Tensor, cu_k: torch.Tensor, scaling: float) -> torch.Tensor:
    """The reference: causal SDPA on each example's slice. query [Hq, Tq, D], key/value [Hkv, Tk, D] -> [Tq, Hq, D].

    A segment with more keys than queries (a shared prefix) gets an explicit bottom-right causal mask: query a
    of Lq sees keys 0 .. a + (Lk - Lq)."""
    groups = query.shape[0] // key.shape[0]
    outputs = []
    for (q_start, q_end), (k_start, k_end) in zip(zip(cu_q[:-1].tolist(), cu_q[1:].tolist()),
                                                  zip(cu_k[:-1].tolist(), cu_k[1:].tolist())):
        q, k, v = query[:, q_start:q_end], key[:, k_start:k_end], value[:, k_start:k_end]
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=0), v.repeat_interleave(groups, dim=0)
        queries, keys = q_end - q_start, k_end - k_start
        if queries == keys:
            outputs.append(F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling))
        else:
            visible = torch.ones(queries, keys, dtype=torch.bool, device=q.device).tril(diagonal=keys - queries)
            outputs.append(F.scaled_dot_product_attention(q, k, v, attn_mask=visible, scale=scaling))
    return torch.cat(outputs, dim=1).transpose(0, 1)


def varlen_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    cu_seq_lens_q: torch.Tensor | None = None,
    max_length_q: int | None = None,
    position_ids: torch.Tensor | None = None,
    kv_index: torch.Tensor | None = None,
    cu_seq_lens_k: torch.Tensor | None = None,
    max_length_k: int | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers attention interface: query [B, Hq, T, D], key/value [B, Hkv, T, D] -> ([B, T, Hq, D], None).

    A batch of several rows is treated as rows of one example each (right padding is harmless under a
    causal mask: real tokens never see the pads after them); one packed row uses the example boundaries;
    with `kv_index` (shared prefixes), each segment's keys are gathered from the flat row first.
    """
    assert dropout == 0.0, "attention dropout is not supported by lorakit_varlen"
    batch, _, length, head_dim = query.shape
    scaling = head_dim**-0.5 if scaling is None else scaling
    if cu_seq_lens_q is not None:
        assert batch == 1, "cu_seq_lens describe one flat packed row"
        cu, max_length = cu_seq_lens_q.to(device=query.device, dtype=torch.int32), int(max_length_q)
    elif position_ids is not None and batch == 1:
        cu, max_length = _boundaries_from_positions(position_ids.to(query.device))
    else:
        cu = torch.arange(0, (batch + 1) * length, length, device=query.device, dtype=torch.int32)
        max_length = length
    # [B, H, T, D] -> [B*T, H, D]: the layout variable-length kernels take.
    q, k, v = (t.transpose(1, 2).reshape(batch * length, t.shape[1], head_dim) for t in (query, key, value))
    cu_k, max_k = cu, max_length
    if kv_index is not None:
        assert cu_seq_lens_q is not None and cu_seq_lens_k is not None, "kv_index needs cu_seq_lens_q and _k"
        index = kv_index.to(query.device)
        k, v = k.index_select(0, index), v.index_select(0, index)
        cu_k, max_k = cu_seq_lens_k.to(device=query.device, dtype=torch.int32), int(max_length_k)
    if sliding_window is not None and sliding_window < max_k:
        raise ValueError(f"lorakit_varlen does not implement sliding windows ({sliding_window} < {max_k} tokens)")
    output = None
    if query.is_cuda and query.dtype in (torch.float16, torch.bfloat16):
        output = _flash_attention(q.contiguous(), k.contiguous(), v.contiguous(), cu, cu_k, max_length, max_k, scaling)
    if output is None:
        output = _per_example_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), cu, cu_k, scaling)
    return output.reshape(batch, length, output.shape[1], head_dim), None
