"""Does PyTorch's variable-length flash attention align its causal mask bottom-right when a query segment is
shorter than its key segment? Shared-prefix packing (a segment's queries attend to a parent prefix, then causally
to themselves) depends on it. Compares varlen flash attention against an explicit bottom-right causal mask in fp32.

    python bench/varlen_alignment_check.py      # on a CUDA machine; prints max |difference| per case
"""

from __future__ import annotations

import inspect

import torch


def reference(q, k, v, cu_q, cu_k, scale):
    """Per segment: query i (of Lq) sees keys j <= i + (Lk - Lq): the bottom-right causal mask, in fp32."""
    out = []
    for s in range(len(cu_q) - 1):
        qs, ks, vs = (t[a:b].float().transpose(0, 1) for t, (a, b) in
                      ((q, (cu_q[s], cu_q[s + 1])), (k, (cu_k[s], cu_k[s + 1])), (v, (cu_k[s], cu_k[s + 1]))))
        lq, lk = qs.shape[1], ks.shape[1]
        if ks.shape[0] != qs.shape[0]:
            ks, vs = (t.repeat_interleave(qs.shape[0] // t.shape[0], 0) for t in (ks, vs))
        mask = torch.arange(lk)[None, :] <= torch.arange(lq)[:, None] + (lk - lq)
        scores = (qs @ ks.transpose(1, 2)) * scale
        scores = scores.masked_fill(~mask.to(scores.device), float("-inf"))
        out.append((scores.softmax(-1) @ vs).transpose(0, 1))
    return torch.cat(out)


def main() -> None:
    from torch.nn.attention.varlen import varlen_attn

    params = inspect.signature(varlen_attn).parameters
    causal = {"is_causal": True} if "is_causal" in params else {"window_size": (-1, 0)}
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, varlen_attn causal spelled {causal}, "
          f"enable_gqa {'enable_gqa' in params}")
    torch.manual_seed(0)
    heads, kv_heads, dim = 24, 8, 128
    for name, q_lens, k_lens in [("equal lengths", [300, 200], [300, 200]),
                                 ("queries shorter (R over P+R)", [500, 280], [500, 480]),
                                 ("SFT: S+X1, X2, X3 over S+Xi", [350, 180, 90], [350, 280, 190])]:
        cu_q = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
        cu_k = torch.tensor([0, *torch.tensor(k_lens).cumsum(0).tolist()], dtype=torch.int32)
        q = torch.randn(sum(q_lens), heads, dim, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(sum(k_lens), kv_heads, dim, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(sum(k_lens), kv_heads, dim, device="cuda", dtype=torch.bfloat16)
        kk, vv = (t.repeat_interleave(heads // kv_heads, 1) for t in (k, v))
        out = varlen_attn(q, kk, vv, cu_q.cuda(), cu_k.cuda(), max(q_lens), max(k_lens), **causal)
        ref = reference(q, k, v, cu_q.tolist(), cu_k.tolist(), dim**-0.5)
        top_left = reference(q, k, v, cu_q.tolist(), cu_q.tolist(), dim**-0.5) if q_lens == k_lens else None
        diff = (out.float() - ref).abs().max().item()
        print(f"{name:32s} max |flash - bottom-right reference| = {diff:.4f} "
              f"({'ALIGNED bottom-right' if diff < 0.05 else 'NOT bottom-right'})"
              + ("" if top_left is None else f"; equal-length sanity {(out.float() - top_left).abs().max().item():.4f}"))


if __name__ == "__main__":
    main()
