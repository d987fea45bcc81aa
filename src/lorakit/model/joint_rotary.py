"""A loaded Phi3 model's rotary embedding applied to q and k as one tensor, at inference only.

Why: a decoding step of the Phi-4-mini-shaped model is host-bound on an H100 (every op costs host time whatever
its size; bench/results/decode_step_ops/). transformers' `apply_rotary_pos_emb` rotates q and k one after the
other: per tensor `mul` cos, `rotate_half` (`neg`, `cat`), `mul` sin, `add` and a `cat` with the unrotated part
(Phi3's partial rotary), 12 kernels per layer. q and k are adjacent in `qkv_proj`'s output, so here they are
viewed as one [rows, heads + kv_heads, seq, head_dim] tensor and rotated once with the same arithmetic in the
same order: 6 kernels per layer, 192 fewer per Phi-4-mini decoding step. Each element goes through the same
`mul`, `mul`, `add` on the same operands, so q and k are bitwise equal to transformers' (fp32 and bf16;
tests/model/test_joint_rotary.py, bench/rotary_joint_check.py), and so are the keys the KV cache stores.

Layout: transformers hands SDPA q as the contiguous output of a `cat`. Here q and k are two slices
(`joint[:, :heads]`, `joint[:, heads:]`) of one contiguous `cat` output: within a row each is laid out as before
(head_dim stride 1, seq stride head_dim, head stride seq * head_dim); only the stride between rows is
(heads + kv_heads) * seq * head_dim instead of heads * seq * head_dim. k goes through the KV cache, whose
`torch.cat` copies it (transformers' DynamicCache cats from the first step on), so with a cache SDPA receives the
same contiguous keys and values as before and only q's row stride differs (tests/model/test_joint_rotary.py checks
the strides). PyTorch's flash and memory-efficient SDPA backends require the last stride to be 1 (sdp_utils'
check_last_dim_stride_equals_1), and the memory-efficient kernel wants the other strides aligned to its vector width
(8 elements in 16 bits): q's strides are multiples of head_dim (Phi-4-mini: 128), so they should pick the same
kernel as before; not yet checked on a GPU (none this session). The GQA `pack_gqa` reshape of a one-token q stays a
view (the op counts are unchanged outside the rotary).

Where the result could differ or the path is not the one written here, the module hands the call to
transformers' own forward: training mode or gradients enabled (training in the same process never runs this;
it also patches only the loaded model's own attention modules, never a class or module global), and a
`modeling_phi3.apply_rotary_pos_emb` that is not transformers' (liger's Triton RoPE, which training on CUDA
installs module-wide, keeps running where it ran before). Llama-architecture models (SmolLM2) keep transformers'
path: their q and k come from two projections, so one rotation would need a `cat` first (not done).
`LORAKIT_DISABLE=joint_rotary` keeps transformers' forward (runtime/ablation.py).

A copy cannot follow transformers: pyproject.toml only sets a lower bound, so a newer release whose
Phi3Attention.forward, apply_rotary_pos_emb or rotate_half reads differently (a q/k norm, another cache call) would
otherwise run this 5.25 copy and answer differently without a word. `use_joint_rotary` therefore switches only
where the three functions' source is the text this forward was copied from (`COPIED_SOURCE`,
model/transformers_source_guard.py), and otherwise keeps transformers' forward with one WARNING; re-check the copy
(tests/model/test_joint_rotary.py) and update the digests on a new transformers.
"""

from __future__ import annotations

import types

import torch

from lorakit.model.transformers_source_guard import CopiedSource
from lorakit.runtime.ablation import enabled
from lorakit.runtime.logging import get_logger

__all__ = ["COPIED_SOURCE", "rotate_query_and_key", "use_joint_rotary"]

log = get_logger("model.joint_rotary")

# What _joint_rotary_forward reproduces, as transformers 5.25.0's modeling_phi3.py spells it: the first 16 hex digits
# of the sha256 of each function's text (ast.get_source_segment: without decorators)
COPIED_SOURCE = CopiedSource("model/joint_rotary.py", "5.25.0", "transformers.models.phi3.modeling_phi3", {
    "Phi3Attention.forward": "060a441fb4996609",
    "apply_rotary_pos_emb": "4186d7f3139ccebb",
    "rotate_half": "c3e95bb5f330fa3c",
})


def rotate_query_and_key(qkv: torch.Tensor, heads: int, kv_heads: int, head_dim: int, cos: torch.Tensor,
                         sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q and k of `qkv` ([rows, seq, (heads + 2 kv_heads) * head_dim]) as [rows, heads or kv_heads, seq, head_dim],
    rotated as one tensor with transformers' arithmetic in its order: x_rot * cos + cat(-x2, x1) * sin, then the
    unrotated part (cos, sin: [rows, seq, rotary_dim])."""
    qk = qkv[..., :(heads + kv_heads) * head_dim].view(*qkv.shape[:-1], heads + kv_heads, head_dim).transpose(1, 2)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    rotary_dim = cos.shape[-1]
    rotated, passed = qk[..., :rotary_dim], qk[..., rotary_dim:]
    half = rotary_dim // 2
    turned = torch.cat((-rotated[..., half:], rotated[..., :half]), dim=-1)
    joint = torch.cat([(rotated * cos) + (turned * sin), passed], dim=-1)
    return joint[:, :heads], joint[:, heads:]


def _joint_rotary_forward(self, hidden_states, position_embeddings, attention_mask, cache=None,
                          past_key_values=None, **kwargs):
    """transformers' Phi3Attention.forward (5.x) with q and k rotated as one tensor; its own forward in training,
    under autograd, or where liger's RoPE replaced transformers'."""
    from transformers.models.phi3 import modeling_phi3

    cache = cache if cache is not None else past_key_values
    if (self.training or torch.is_grad_enabled()
            or modeling_phi3.apply_rotary_pos_emb.__module__ != modeling_phi3.__name__):
        return type(self).forward(self, hidden_states, position_embeddings, attention_mask, cache=cache, **kwargs)
    input_shape = hidden_states.shape[:-1]
    heads, kv_heads = self.config.num_attention_heads, self.num_key_value_heads
    qkv = self.qkv_proj(hidden_states)
    cos, sin = position_embeddings
    query_states, key_states = rotate_query_and_key(qkv, heads, kv_heads, self.head_dim, cos, sin)
    value_states = qkv[..., (heads + kv_heads) * self.head_dim:].view(*input_shape, -1, self.head_dim).transpose(1, 2)
    if cache is not None:
        key_states, value_states = cache.update(key_states, value_states, self.layer_idx, kwargs=kwargs)
    attention_interface = modeling_phi3.ALL_ATTENTION_FUNCTIONS.get_interface(
        self.config._attn_implementation, modeling_phi3.eager_attention_forward)
    attn_output, attn_weights = attention_interface(
        self, query_states, key_states, value_states, attention_mask, dropout=0.0, scaling=self.scaling,
        sliding_window=getattr(self.config, "sliding_window", None), **kwargs)
    attn_output = attn_output.reshape(*input_shape, -1).contiguous()
    return self.o_proj(attn_output), attn_weights


def use_joint_rotary(model: torch.nn.Module) -> int:
    """Give every Phi3 attention module of `model` that still runs its class's forward the joint-rotary forward,
    for a model that only generates (load_run). Returns how many were switched: 0 for other architectures, when
    `LORAKIT_DISABLE` lists joint_rotary, and when the installed transformers no longer reads as the copied text."""
    from transformers.models.phi3.modeling_phi3 import Phi3Attention

    if not enabled("joint_rotary"):
        return 0
    attention = [module for module in model.modules()
                 if isinstance(module, Phi3Attention) and "forward" not in vars(module)]
    if attention and not COPIED_SOURCE.holds(log, "joint rotary", "attention forward"):
        return 0
    for module in attention:
        module.forward = types.MethodType(_joint_rotary_forward, module)
    return len(attention)
