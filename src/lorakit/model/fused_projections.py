"""Phi3's fused projections (`qkv_proj`, `gate_up_proj`) used without the copies transformers makes of them.

transformers slices q, k and v out of `qkv_proj`'s output with three `qkv[..., a:b]` views. The backward pass
of each slice is a zero-filled tensor the size of the whole qkv output with that slice's gradient copied in,
and the three are then added: on the H200 profile of Phi-4-mini that was 3 fills, 3 copies and 2 adds of
[tokens, 5120] per layer (bench/results/history/peer_speed_run1/profile_bf16.md). `torch.split` gives the same three
views, and its backward is one concatenation.

liger's Phi3 SwiGLU chunks `gate_up_proj`'s output and makes both halves contiguous (two copies, kept for
backward) and the backward pass concatenates the two gradients again. liger also has a kernel that reads the
two halves of the fused tensor in place and writes the gradient as one tensor (`LigerFusedGateUpSiLUMulFunction`,
same arithmetic); with it a layer keeps [tokens, 2 x intermediate] fewer activations (256 MiB per layer of
Phi-4-mini at 8,192 tokens) and skips three copies.

Both give the same numbers as the modules they replace (tests/model/test_fused_projections.py: the split on
CPU, the SwiGLU's glue on CPU with liger's kernel stood in for, and the kernel itself on a GPU).

The split forward is a copy of transformers 5.25.0's Phi3Attention.forward, which a newer release may change (a
q/k norm, another cache call): it is installed only where the installed transformers' Phi3Attention.forward reads
as the copied text (`COPIED_SOURCE`, model/transformers_source_guard.py); otherwise the attention keeps
transformers' forward (with its three slices) and one WARNING says so.
"""

from __future__ import annotations

import functools
import types

import torch

from lorakit.model.kernels import liger_available
from lorakit.model.transformers_source_guard import CopiedSource
from lorakit.runtime.ablation import enabled
from lorakit.runtime.logging import get_logger

__all__ = ["COPIED_SOURCE", "split_qkv_attention_forward", "fused_gate_up_mlp_forward", "use_fused_projections"]

log = get_logger("model.fused_projections")

# What split_qkv_attention_forward reproduces, as transformers 5.25.0's modeling_phi3.py spells it (the rotation,
# the attention interface and the cache are looked up at call time, so their text is transformers' own)
COPIED_SOURCE = CopiedSource("model/fused_projections.py", "5.25.0", "transformers.models.phi3.modeling_phi3",
                             {"Phi3Attention.forward": "060a441fb4996609"})


def split_qkv_attention_forward(self, hidden_states, position_embeddings, attention_mask, cache=None,
                                past_key_values=None, **kwargs):
    """transformers' Phi3Attention.forward (5.x), with q, k and v taken by one `split`."""
    from transformers.models.phi3 import modeling_phi3

    cache = cache if cache is not None else past_key_values
    input_shape = hidden_states.shape[:-1]
    hidden_shape = (*input_shape, -1, self.head_dim)
    query_width = self.config.num_attention_heads * self.head_dim
    kv_width = self.num_key_value_heads * self.head_dim
    query_states, key_states, value_states = self.qkv_proj(hidden_states).split([query_width, kv_width, kv_width], -1)
    query_states = query_states.view(hidden_shape).transpose(1, 2)
    key_states = key_states.view(hidden_shape).transpose(1, 2)
    value_states = value_states.view(hidden_shape).transpose(1, 2)
    cos, sin = position_embeddings
    # Looked up at call time: liger replaces the module's apply_rotary_pos_emb with its Triton RoPE.
    query_states, key_states = modeling_phi3.apply_rotary_pos_emb(query_states, key_states, cos, sin)
    if cache is not None:
        key_states, value_states = cache.update(key_states, value_states, self.layer_idx, kwargs=kwargs)
    attention_interface = modeling_phi3.ALL_ATTENTION_FUNCTIONS.get_interface(
        self.config._attn_implementation, modeling_phi3.eager_attention_forward)
    attn_output, attn_weights = attention_interface(
        self, query_states, key_states, value_states, attention_mask,
        dropout=0.0 if not self.training else self.attention_dropout, scaling=self.scaling,
        sliding_window=getattr(self.config, "sliding_window", None), **kwargs)
    attn_output = attn_output.reshape(*input_shape, -1).contiguous()
    return self.o_proj(attn_output), attn_weights


@functools.cache
def _fused_gate_up_swiglu():
    """liger's SwiGLU over the fused gate-up tensor, or None where this liger has none (before 0.8)."""
    try:
        from liger_kernel.ops import LigerFusedGateUpSiLUMulFunction
    except ImportError as error:
        log.warning("liger's fused gate-up SwiGLU is unavailable (%s): Phi3's MLP keeps liger's chunked one", error)
        return None
    return LigerFusedGateUpSiLUMulFunction


def fused_gate_up_mlp_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    """Phi3MLP.forward with liger's SwiGLU reading both halves of `gate_up_proj`'s output in place."""
    gate_up = self.gate_up_proj(hidden_states)
    # liger's backward returns the gradient as [rows, 2 x intermediate] whatever the input's shape: give it rows.
    # in_place: the gradient overwrites `gate_up`, which nothing else keeps for backward (the LoRA add saves its
    # input, the frozen product its input). A second backward through the same graph is refused by liger.
    rows = gate_up.reshape(-1, gate_up.shape[-1])
    activated = _fused_gate_up_swiglu().apply(rows, True)
    return self.down_proj(activated.view(*gate_up.shape[:-1], activated.shape[-1]))


# By name: liger replaces `modeling_phi3.Phi3MLP` with its own class when it patches a model, so the modules of
# a model loaded before that are instances of a class the module no longer names (seen on the H200: the kernel
# was never used in training), and the modules of models loaded after it are liger's.
PHI3_MLP_CLASSES = ("Phi3MLP", "LigerPhi3SwiGLUMLP")


def use_fused_projections(model, device: torch.device) -> list[str]:
    """Switch a Phi3-architecture model's attention (every device, where transformers' forward is still the text
    the split copies) and, on CUDA with liger, its SwiGLU MLP to the copy-free forwards above; returns what was
    switched. Call before LoRA wraps the projections (or after: the forwards call `self.qkv_proj` /
    `self.gate_up_proj` whatever they are)."""
    try:
        from transformers.models.phi3.modeling_phi3 import Phi3Attention
    except ImportError:
        return []
    switched = []
    mlp_kernel = device.type == "cuda" and liger_available() and _fused_gate_up_swiglu() is not None
    split_qkv = (enabled("split_qkv") and any(isinstance(module, Phi3Attention) for module in model.modules())
                 and COPIED_SOURCE.holds(log, "split qkv", "attention forward"))
    for module in model.modules():
        if isinstance(module, Phi3Attention) and split_qkv:
            module.forward = types.MethodType(split_qkv_attention_forward, module)
            switched.append("split_qkv")
        elif type(module).__name__ in PHI3_MLP_CLASSES and mlp_kernel and enabled("fused_gate_up"):
            if module.config.hidden_act not in ("silu", "swish"):
                continue
            module.forward = types.MethodType(fused_gate_up_mlp_forward, module)
            switched.append("fused_gate_up")
    return sorted(set(switched))
