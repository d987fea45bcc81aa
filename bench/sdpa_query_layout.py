"""Issue 23, joint rotary (src/lorakit/model/joint_rotary.py): does SDPA on this machine's CPU take longer for a q
that is a slice of the joint q+k tensor (rows further apart) than for a contiguous one?

    python bench/sdpa_query_layout.py

Phi-4-mini's decoding shapes: one token per row, 24 heads over 8 KV heads of 128, q packed for GQA as transformers
does when a mask is present (pack_gqa), a 60-column cache, boolean mask, 1 torch thread; microseconds per SDPA
call (3,000 calls per round, 7 rounds alternating, medians). The GPU question (which SDPA kernel a strided q gets)
needs a GPU profile; this answers the CPU's only.
"""

from __future__ import annotations

import statistics
import time

import torch

HEADS, KV_HEADS, HEAD_DIM, CACHE = 24, 8, 128, 60


def main() -> None:
    torch.set_num_threads(1)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    for rows in (1, 8):
        joint = torch.randn(rows, HEADS + KV_HEADS, 1, HEAD_DIM)
        queries = {"contiguous": joint[:, :HEADS].contiguous().reshape(rows, KV_HEADS, -1, HEAD_DIM),
                   "joint slice": joint[:, :HEADS].reshape(rows, KV_HEADS, -1, HEAD_DIM)}
        key, value = torch.randn(rows, KV_HEADS, CACHE, HEAD_DIM), torch.randn(rows, KV_HEADS, CACHE, HEAD_DIM)
        mask = torch.ones(rows, 1, 1, CACHE, dtype=torch.bool)
        times: dict[str, list[float]] = {name: [] for name in queries}
        for _ in range(7):
            for name, query in queries.items():
                started = time.perf_counter()
                for _ in range(3000):
                    sdpa(query, key, value, attn_mask=mask, scale=HEAD_DIM ** -0.5)
                times[name].append(1e6 * (time.perf_counter() - started) / 3000)
        print(f"{rows} row(s): " + ", ".join(f"{name} {statistics.median(ts):.1f} us (q strides "
                                             f"{queries[name].stride()})" for name, ts in times.items()))


if __name__ == "__main__":
    main()
