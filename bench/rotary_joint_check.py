"""Issue 23, what else could go (bench/results/decode_step_ops/README.md): Phi3's rotary embedding applied to q and
k as one tensor (they are adjacent in qkv_proj's output) gives the same q and k bit for bit, in fewer kernels.

    python bench/rotary_joint_check.py

A check for the report, not lorakit code: transformers' `apply_rotary_pos_emb` (Phi3: partial rotary, 12 kernels
per layer) against `joint_rotary` below (6 kernels) on random q, k from one qkv output with Phi-4-mini's heads,
decoding shapes (1 and 8 rows, 1 token) and a prefill, fp32 and bf16, counted with bench/lib/step_ops.py's mode.
What it does not check: that SDPA on a GPU picks the same kernel for q and k with these strides (views of the
joint tensor instead of the contiguous outputs of `torch.cat`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers.models.phi3.modeling_phi3 import apply_rotary_pos_emb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lib.step_ops import StepOpCounter  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM, ROTARY = 24, 8, 128, 96  # Phi-4-mini: partial_rotary_factor 0.75


def joint_rotary(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q and k of `qkv` [rows, seq, (heads + 2 kv) * head_dim], rotated as one [rows, heads + kv, seq, head_dim]
    tensor with transformers' arithmetic in its order: x_rot * cos + cat(-x2, x1) * sin, then the unrotated part."""
    rows, seq = qkv.shape[:2]
    qk = qkv[..., :(HEADS + KV_HEADS) * HEAD_DIM].view(rows, seq, HEADS + KV_HEADS, HEAD_DIM).transpose(1, 2)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    rotated, passed = qk[..., :ROTARY], qk[..., ROTARY:]
    half = ROTARY // 2
    turned = torch.cat((-rotated[..., half:], rotated[..., :half]), dim=-1)
    joint = torch.cat([(rotated * cos) + (turned * sin), passed], dim=-1)
    return joint[:, :HEADS], joint[:, HEADS:]


def reference(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' Phi3Attention: slice q and k, view, transpose, apply_rotary_pos_emb."""
    rows, seq = qkv.shape[:2]
    q = qkv[..., :HEADS * HEAD_DIM].view(rows, seq, -1, HEAD_DIM).transpose(1, 2)
    k = qkv[..., HEADS * HEAD_DIM:(HEADS + KV_HEADS) * HEAD_DIM].view(rows, seq, -1, HEAD_DIM).transpose(1, 2)
    return apply_rotary_pos_emb(q, k, cos, sin)


def kernels(function, *args) -> int:
    with StepOpCounter({}) as counter:
        function(*args)
    return counter.count.kernels


def main() -> None:
    generator = torch.Generator().manual_seed(0)
    print("| dtype | rows x tokens | q, k bitwise equal | kernels: transformers | kernels: joint |")
    print("|---|---|---|---|---|")
    for dtype in (torch.float32, torch.bfloat16):
        for rows, seq in ((1, 1), (8, 1), (2, 37)):
            qkv = torch.randn(rows, seq, (HEADS + 2 * KV_HEADS) * HEAD_DIM, generator=generator).to(dtype)
            angles = torch.rand(rows, seq, ROTARY // 2, generator=generator) * 100
            emb = torch.cat((angles, angles), dim=-1)
            cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)
            expected, got = reference(qkv, cos, sin), joint_rotary(qkv, cos, sin)
            equal = all(torch.equal(a, b) for a, b in zip(expected, got))
            print(f"| {str(dtype).removeprefix('torch.')} | {rows} x {seq} | {equal} | "
                  f"{kernels(reference, qkv, cos, sin)} | {kernels(joint_rotary, qkv, cos, sin)} |")


if __name__ == "__main__":
    main()
