"""Shared-prefix vs padded preference batches on the GPU: the same per-row log-probs, DPO loss and LoRA gradients,
and the time of one policy + reference forward/backward micro-batch each way.

    python bench/shared_prefix_check.py [--layers 32] [--pairs 4] [--out FILE.json]   # CUDA, bf16 (< 2 min on an H100)
    python bench/shared_prefix_check.py --device cpu --tiny                           # smoke: tiny Phi3, fp32

Model: the Phi-4-mini-shaped Phi3 of bench/lib/phi4_mini_run.py with random weights (--layers of its 32; --tiny:
its 2-layer smoke shape), bf16 LoRA (r16 on all linear layers, lora_B drawn at random so the adapter matters; no
nf4: the check is about the layout, not the quantization), made trainable by lorakit's own `make_trainable`
(liger kernels, fused projections, lorakit_varlen attention) with the first half of the layers checkpointed, so
kv_index reaches the attention both through plain and through checkpointed layers. Pairs: one micro-batch of
bench/preference_speed.py's synthetic pairs (prompt 200-512 tokens, answers ~270).

The padded side is what training.shared_prefix: false runs: the rows padded, through the model's own attention
(sdpa); the shared side: one flat row, lorakit_varlen with gathered keys (flash attention's bottom-right causal
mask). Reported: (a) max |difference| of the per-row summed answer log-probs, and per token; (b) DPO loss
(reference = adapter off) and the cosine similarity of the LoRA gradients; (c) milliseconds of one micro-batch
(reference forward + policy forward/backward), median of --repeats after one warm-up, and positions computed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from lib.phi4_mini_run import PHI4_MINI, SMOKE, TOKENIZER  # noqa: E402
from lorakit.config import DEFAULT_SYSTEM_PROMPT, RunConfig  # noqa: E402
from lorakit.data.conversation import Message  # noqa: E402
from lorakit.data.preference import PreferencePair  # noqa: E402
from lorakit.data.preference_batch import collate_preferences, collate_preferences_shared, render_preferences  # noqa: E402
from lorakit.model.attention import VARLEN_ATTENTION  # noqa: E402
from lorakit.model.trainable import make_trainable  # noqa: E402
from lorakit.training.preference_loss import preference_loss, row_logps  # noqa: E402
from preference_speed import synthetic_pairs  # noqa: E402


def build(args, device: torch.device, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer, Phi3Config

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    shape = dict(SMOKE if args.tiny else PHI4_MINI)
    if args.layers:
        shape["num_hidden_layers"] = args.layers
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(Phi3Config(**shape), dtype=dtype)
    config = RunConfig.model_validate({
        "model": {"name": "random-phi3", "max_length": 256 if args.tiny else 1024},
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
        "training": {"method": "dpo", "precision": "fp32" if dtype == torch.float32 else "bf16"},
        "data": {"train_file": "unused.jsonl"}})
    model = make_trainable(model, config, device=device, quantized=False,
                           checkpointed_layers=shape["num_hidden_layers"] // 2)
    generator = torch.Generator(device="cpu").manual_seed(1)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            parameter.data.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
    model.train()
    rows = synthetic_pairs(tokenizer, DEFAULT_SYSTEM_PROMPT, args.pairs, seed=args.seed, smoke=args.tiny)
    pairs = [PreferencePair((Message("user", row["prompt"][1]["content"]),), row["chosen"][0]["content"],
                            row["rejected"][0]["content"]) for row in rows]
    examples = render_preferences(pairs, tokenizer, DEFAULT_SYSTEM_PROMPT, config.model.max_length)
    return model, examples, tokenizer


def on(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def attention(model, implementation: str) -> None:
    model.get_base_model().set_attn_implementation(implementation)


def lora_grads(model) -> torch.Tensor:
    grads = torch.cat([p.grad.float().flatten() for _, p in model.named_parameters() if p.requires_grad])
    model.zero_grad(set_to_none=True)
    return grads


def one_micro_batch(model, batch: dict, autocast) -> torch.Tensor:
    with autocast:
        result = preference_loss(model, batch, "dpo", beta=0.1)  # reference forward, then the policy's
    result.loss.backward()
    return result.loss.detach()


def timed(model, batch: dict, autocast, device: torch.device, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats + 1):  # the first is the warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        one_micro_batch(model, batch, autocast)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000)
        model.zero_grad(set_to_none=True)
    return times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--tiny", action="store_true", help="the 2-layer smoke shape and short pairs")
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (default: the shape's)")
    parser.add_argument("--pairs", type=int, default=4, help="pairs in the micro-batch (preference_speed.py's 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else torch.autocast(
        device.type, enabled=False)
    began = time.perf_counter()
    model, examples, tokenizer = build(args, device, dtype)
    padded = on(collate_preferences(examples, tokenizer.pad_token_id), device)
    shared = on(collate_preferences_shared(examples), device)
    layouts = {"padded (sdpa)": ("sdpa", padded), "shared prefix (lorakit_varlen)": (VARLEN_ATTENTION, shared)}

    sums, losses, grads, times = {}, {}, {}, {}
    for name, (implementation, batch) in layouts.items():
        attention(model, implementation)
        with torch.no_grad(), autocast:
            sums[name], counts = row_logps(model, batch)
        losses[name] = float(one_micro_batch(model, batch, autocast))
        grads[name] = lora_grads(model)
        times[name] = timed(model, batch, autocast, device, args.repeats)
    (padded_name, shared_name) = layouts
    difference = (sums[padded_name] - sums[shared_name]).abs().float()
    answer_tokens = counts.float()
    cosine = float(torch.nn.functional.cosine_similarity(grads[padded_name], grads[shared_name], dim=0))
    result = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu", "dtype": str(dtype),
        "torch": torch.__version__, "layers": model.get_base_model().config.num_hidden_layers, "pairs": len(examples),
        "answer_tokens_per_row_mean": float(answer_tokens.mean()),
        "prompt_tokens_shared_mean": statistics.mean(e.tokens - e.shared_positions for e in examples),
        "max_abs_row_logp_diff_nats": float(difference.max()),
        "max_abs_row_logp_diff_per_token_nats": float((difference / answer_tokens).max()),
        "dpo_loss": losses, "dpo_loss_abs_diff": abs(losses[padded_name] - losses[shared_name]),
        "lora_grad_cosine": cosine,
        "lora_grad_norm": {name: float(g.norm()) for name, g in grads.items()},
        "positions_computed": {padded_name: padded["input_ids"].numel(), shared_name: shared["input_ids"].numel()},
        "real_tokens": sum(e.tokens for e in examples),
        "ms_per_micro_batch_median": {name: statistics.median(t) for name, t in times.items()},
        "ms_per_micro_batch": times, "wall_seconds": time.perf_counter() - began,
    }
    speedup = result["ms_per_micro_batch_median"][padded_name] / result["ms_per_micro_batch_median"][shared_name]
    print(json.dumps(result, indent=1))
    print(f"\n{result['device']}, {result['dtype']}, {result['layers']} layers, {result['pairs']} pairs "
          f"({result['real_tokens']} real tokens, mean shared prefix {result['prompt_tokens_shared_mean']:.0f} tokens, "
          f"mean answer {result['answer_tokens_per_row_mean']:.0f} tokens)")
    print("| layout | positions computed | ms / micro-batch (policy + reference, fwd + bwd) | DPO loss |")
    print("|---|---|---|---|")
    for name in layouts:
        print(f"| {name} | {result['positions_computed'][name]:,} | {result['ms_per_micro_batch_median'][name]:,.1f} | "
              f"{losses[name]:.6f} |")
    print(f"\nper-row summed log-prob max |diff| {result['max_abs_row_logp_diff_nats']:.4g} nats "
          f"({result['max_abs_row_logp_diff_per_token_nats']:.3g} per answer token); DPO loss |diff| "
          f"{result['dpo_loss_abs_diff']:.3g}; LoRA gradient cosine {cosine:.6f}; shared / padded speed {speedup:.2f}x")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
