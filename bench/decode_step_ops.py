"""Issue 23: the ATen ops one decoding step of a loaded LoRA run dispatches, by source, with each inference
optimisation on and off (LORAKIT_DISABLE), on CPU.

    python bench/decode_step_ops.py --out bench/results/decode_step_ops        # Phi-4-mini's 32 layers, tiny widths
    python bench/decode_step_ops.py --run-dir RUN --out DIR                     # a finished run (e.g. the demo's)

The random model has Phi-4-mini's architecture and layer count (Phi3, 32 layers, 24 heads over 8 KV heads, partial
rotary, tied embeddings, LoRA on every linear layer as `lorakit train` adapts it) at tiny widths: the ops a step
dispatches do not depend on the widths, so its counts are Phi-4-mini's (bench/lib/step_ops.py says what is counted).
The run is loaded by lorakit's load_run (as chat, eval, serve and the studio load it), one request joins
serve's RunningBatch (repetition penalty 1.1, greedy), a few steps warm it up, and one step is counted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lib.step_ops import ROLES, OpCount, count_ops  # noqa: E402

# name in the table -> LORAKIT_DISABLE for it, each switching one more off (on a CPU's fp32 the adapter's dtype is the
# base's: the last two agree).
VARIANTS = {"now (all on)": "", "joint_rotary off (transformers' rotary)": "joint_rotary",
            "also inference_lora off (peft's LoRA forward)": "joint_rotary,inference_lora",
            "also adapter_in_base_dtype off (before session 11)": "joint_rotary,inference_lora,adapter_in_base_dtype"}
PHI4_MINI_LAYERS = dict(vocab_size=49152, hidden_size=192, intermediate_size=256, num_hidden_layers=32,
                        num_attention_heads=24, num_key_value_heads=8, partial_rotary_factor=0.75,
                        tie_word_embeddings=True, max_position_embeddings=131072, rms_norm_eps=1e-5, hidden_act="silu",
                        resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0, bos_token_id=1, eos_token_id=2,
                        pad_token_id=2)


def random_run(work: Path) -> Path:
    """A finished run of the random model: one `lorakit train` step on the bundled data (bench/smollm2_shaped_run)."""
    import smollm2_shaped_run
    from lib.phi4_mini_run import build_model

    run_dir = work / "phi4-mini-layers-run"
    if not (run_dir / "final").is_dir():
        model = work / "phi4-mini-layers-model"
        build_model(model, PHI4_MINI_LAYERS)
        smollm2_shaped_run.train_one_step(model, run_dir)
    return run_dir


def load(run_dir: Path, disabled: str, dtype: str):
    """load_run with LORAKIT_DISABLE=`disabled`, in `dtype` (bf16 stands in for a GPU's dtype on the CPU)."""
    import torch

    from lorakit.inference import generate

    os.environ["LORAKIT_DISABLE"] = disabled
    if dtype == "bf16":
        generate.compute_dtype = lambda precision, device: torch.bfloat16
    try:
        return generate.load_run(run_dir)
    finally:
        os.environ["LORAKIT_DISABLE"] = ""


def joined_batch(run, rows: int, max_new_tokens: int):
    """Serve's RunningBatch with `rows` requests joined (greedy, repetition penalty 1.1) and three warm-up steps."""
    from lorakit.data.records import Message
    from lorakit.data.render import render_prompt_ids
    from lorakit.inference.decode import GenerationSettings
    from lorakit.inference.running_batch import RowRequest, RunningBatch

    settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=0.0, repetition_penalty=1.1)
    batch = RunningBatch(run.model, stop_ids=[], pad_id=0, device=run.device)
    questions = ["What is insulin?", "What are the warning signs of a stroke?", "Fever?", "What do kidneys do?"]
    batch.join([RowRequest(i, render_prompt_ids((Message("user", questions[i % 4]),), run.tokenizer,
                                                run.system_prompt), settings) for i in range(rows)])
    for _ in range(3):
        batch.step()
    return batch


def step_ms(runs: dict, rows: int, steps: int, rounds: int) -> dict[str, list[float]]:
    """Median ms per RunningBatch step over `steps` steps, per variant, `rounds` rounds alternating the variants."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            batch = joined_batch(run, rows, steps + 4)
            per_step = []
            for _ in range(steps):
                started = time.perf_counter()
                batch.step()
                per_step.append(time.perf_counter() - started)
            times[name].append(1000 * statistics.median(per_step))
    return times


def layer_us(run, calls: int, rounds: int) -> dict[str, list[float]]:
    """Microseconds per call of one adapted layer (the run's first) on a one-token row under no_grad: peft's forward
    and the inference forward, `rounds` rounds alternating; the whole step's host time without its noise."""
    import torch

    layer = next(m for m in run.model.modules() if hasattr(m, "lora_A") and "forward" in vars(m))
    x = torch.randn(1, 1, layer.in_features, dtype=layer.lora_A[layer.active_adapters[0]].weight.dtype)
    forwards = {"inference forward": lambda: layer.forward(x),
                "peft's forward": lambda: type(layer).forward(layer, x)}
    return _alternating_us(forwards, calls, rounds)


def _alternating_us(forwards: dict, calls: int, rounds: int) -> dict[str, list[float]]:
    """Microseconds per call of each no-argument callable under no_grad, `rounds` rounds alternating between them."""
    import torch

    times: dict[str, list[float]] = {name: [] for name in forwards}
    with torch.no_grad():
        for _ in range(rounds):
            for name, forward in forwards.items():
                started = time.perf_counter()
                for _ in range(calls):
                    forward()
                times[name].append(1e6 * (time.perf_counter() - started) / calls)
    return times


def rotary_us(rows: int, calls: int, rounds: int) -> dict[str, list[float]]:
    """Microseconds per layer of rotating one token's q and k per row at Phi-4-mini's real widths (24 over 8 heads of
    128, rotary 96), fp32: transformers' slices + apply_rotary_pos_emb, and model/joint_rotary.py's one rotation."""
    import torch
    from transformers.models.phi3.modeling_phi3 import apply_rotary_pos_emb

    from lorakit.model.joint_rotary import rotate_query_and_key

    heads, kv_heads, head_dim = 24, 8, 128
    qkv = torch.randn(rows, 1, (heads + 2 * kv_heads) * head_dim)
    cos, sin = torch.randn(rows, 1, 96), torch.randn(rows, 1, 96)

    def transformers_rotary():
        q = qkv[..., :heads * head_dim].view(rows, 1, -1, head_dim).transpose(1, 2)
        k = qkv[..., heads * head_dim:(heads + kv_heads) * head_dim].view(rows, 1, -1, head_dim).transpose(1, 2)
        return apply_rotary_pos_emb(q, k, cos, sin)

    forwards = {"transformers": transformers_rotary,
                "joint": lambda: rotate_query_and_key(qkv, heads, kv_heads, head_dim, cos, sin)}
    return _alternating_us(forwards, calls, rounds)


def table(counts: dict[str, OpCount]) -> list[str]:
    names = list(counts)
    head = "| source | " + " | ".join(f"{n}: ops (kernels)" for n in names) + " |"
    lines = [head, "|" + "---|" * (len(names) + 1)]
    for role in ROLES + sorted({s for c in counts.values() for s in c.by_source} - set(ROLES)):
        if any(c.by_source[role] for c in counts.values()):
            cells = [f"{c.by_source[role]} ({c.kernels_by_source[role]})" for c in counts.values()]
            lines.append(f"| {role} | " + " | ".join(cells) + " |")
    lines.append("| **total** | " + " | ".join(f"**{c.total} ({c.kernels})**" for c in counts.values()) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, help="A finished run; default: the random Phi-4-mini-layered one.")
    parser.add_argument("--work", type=Path, default=Path("/tmp/lorakit-decode-step-ops"))
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                        help="fp32: what load_run gives on a CPU; bf16: what it gives on a GPU (counts as a GPU's).")
    parser.add_argument("--time-steps", type=int, default=0, help="Also time this many steps per variant and round.")
    parser.add_argument("--layer-calls", type=int, default=0, help="Also time one adapted layer alone, this many calls.")
    parser.add_argument("--rotary-calls", type=int, default=0, help="Also time one layer's rotary alone, this many calls.")
    parser.add_argument("--rounds", type=int, default=5, help="Timing rounds, the variants alternating.")
    parser.add_argument("--out", type=Path, help="Also write table_DTYPE.md and op_names_DTYPE.txt here.")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    run_dir = args.run_dir or random_run(args.work)
    runs = {variant: load(run_dir, disabled, args.dtype) for variant, disabled in VARIANTS.items()}
    lines = [f"# python bench/decode_step_ops.py {' '.join(sys.argv[1:])}",
             f"# run {run_dir}, torch {torch.__version__}, CPU ({os.cpu_count()} cores, 1 thread), {args.dtype}; "
             "ops (of which kernel-launching) per RunningBatch decoding step"]
    names: list[str] = []
    for rows in args.rows:
        counts = {variant: count_ops(run.model, joined_batch(run, rows, 8).step) for variant, run in runs.items()}
        lines += ["", f"## {rows} row{'s' if rows > 1 else ''}", "", *table(counts)]
        for variant, count in counts.items():
            names += [f"## {rows} rows, {variant}", *(f"{n} {c}" for n, c in count.by_name.most_common())]
        if args.time_steps:
            times = step_ms(runs, rows, args.time_steps, args.rounds)
            lines += ["", f"ms per step (median of {args.time_steps} steps), {args.rounds} rounds alternating:"]
            lines += [f"- {variant}: {', '.join(f'{t:.2f}' for t in ts)} (median {statistics.median(ts):.2f})"
                      for variant, ts in times.items()]
    if args.layer_calls:
        times = layer_us(runs["now (all on)"], args.layer_calls, args.rounds)
        lines += ["", f"us per call of one adapted layer (one token, {args.layer_calls} calls), {args.rounds} rounds alternating:"]
        lines += [f"- {name}: {', '.join(f'{t:.1f}' for t in ts)} (median {statistics.median(ts):.1f})"
                  for name, ts in times.items()]
    if args.rotary_calls:
        for rows in args.rows:
            times = rotary_us(rows, args.rotary_calls, args.rounds)
            lines += ["", f"us per layer of rotary, q and k of one token x {rows} row(s) at Phi-4-mini's widths, fp32 "
                      f"({args.rotary_calls} calls), {args.rounds} rounds alternating:"]
            lines += [f"- {name}: {', '.join(f'{t:.1f}' for t in ts)} (median {statistics.median(ts):.1f})"
                      for name, ts in times.items()]
    print("\n".join(lines))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"table_{args.dtype}.md").write_text("\n".join(lines) + "\n")
        (args.out / f"op_names_{args.dtype}.txt").write_text("\n".join(names) + "\n")


if __name__ == "__main__":
    main()
