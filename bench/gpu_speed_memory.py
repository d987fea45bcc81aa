"""Issue 6 benchmark, in ONE run on one GPU: (a) the guide's QLoRA recipe, (b) lorakit QLoRA, (c) lorakit bf16
LoRA, on the same synthetic chat data and the same Phi-4-mini-shaped model with random weights; plus the
steps between them, long-context QLoRA peaks, and the memory planner's predictions against measured peaks.

    python bench/gpu_speed_memory.py --out DIR [--smoke]

Numbers: trained tokens/s counts real (non-padding) tokens; MFU = useful FLOPs / (seconds x bf16 matmul rate
measured here), useful FLOPs = 4 x linear parameters (LM head included) per real token + causal attention
(6 n^2 x heads x head_dim per layer for an n-token example, forward + backward). MFU* counts the LM head only
at positions that have a target (the loss needs no logits elsewhere; lorakit skips them, the guide does not).
lorakit rows drive lorakit's own code: load_base_model, make_trainable, and Trainer.step (training/trainer.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lib.gpu_runs import matmul_tflops  # noqa: E402
from lib.guide_recipe import run_guide_recipe  # noqa: E402
from lib.synthetic_chat import rendered_examples  # noqa: E402

from lorakit.config import RunConfig  # noqa: E402
from lorakit.data.masking import IGNORE_INDEX  # noqa: E402
from lorakit.data.splits import Splits  # noqa: E402
from lorakit.model import kernels  # noqa: E402
from lorakit.model.attention import expands_kv_heads  # noqa: E402
from lorakit.model.checkpointing import apply_checkpointing  # noqa: E402
from lorakit.model.load import load_base_model, resolve_model_source  # noqa: E402
from lorakit.plan.memory import GIB, ModelShape, TrainSettings, estimate_peak_memory  # noqa: E402
from lorakit.model.quantize import nf4_config  # noqa: E402
from lorakit.plan.run_plan import resolve_auto_settings  # noqa: E402
from lorakit.model.trainable import make_trainable, skip_fp32_input_copies  # noqa: E402
from lorakit.training.dataset import PreparedData  # noqa: E402
from lorakit.training.objective import NextTokenObjective  # noqa: E402
from lorakit.training.session import TrainingSession  # noqa: E402
from lorakit.training.trainer import Trainer, TrainerHooks  # noqa: E402

PHI4_MINI = dict(vocab_size=200064, hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
                 num_attention_heads=24, num_key_value_heads=8, partial_rotary_factor=0.75, tie_word_embeddings=True,
                 max_position_embeddings=131072, sliding_window=262144, rms_norm_eps=1e-5, hidden_act="silu",
                 resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0, bos_token_id=1, eos_token_id=2, pad_token_id=2)
SMOKE = dict(PHI4_MINI, num_hidden_layers=2, hidden_size=1024, intermediate_size=2048, num_attention_heads=8,
             num_key_value_heads=4)


def build_random_model(directory: Path, shape: dict) -> None:
    from transformers import AutoModelForCausalLM, Phi3Config

    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(Phi3Config(**shape), dtype=torch.bfloat16)
    model.save_pretrained(directory)
    del model
    torch.cuda.empty_cache()


def useful_flops(shape: dict, lengths: list[int], targets: list[int]) -> tuple[float, float]:
    """(issue definition, LM head only at target positions) for examples of `lengths` real tokens."""
    s = ModelShape.from_config(dict(shape, model_type="phi3"))
    body, head = s.layers * s.linear_params_per_layer, s.vocab * s.hidden
    attention = sum(6 * n * n * s.heads * s.head_dim * s.layers for n in lengths)
    tokens, trained = sum(lengths), sum(targets)
    return 4 * (body + head) * tokens + attention, 4 * body * tokens + 4 * head * trained + attention


def lorakit_config(model_dir: str, max_length: int, *, quantization: str, precision: str = "bf16",
                   packing: bool = True) -> RunConfig:
    """lorakit's defaults, with the settings this benchmark names; `auto` is left for the planner."""
    return RunConfig.model_validate({
        "model": {"name": model_dir, "max_length": max_length, "quantization": quantization},
        "training": {"precision": precision, "packing": packing, "batch_size": "auto", "gradient_checkpointing": "auto",
                     "gradient_accumulation_steps": 1, "max_steps": 1000, "lr_scheduler": "constant"},
        "data": {"train_file": "synthetic.jsonl", "validation_split": 0.0, "test_split": 0.0},
    })


def run_lorakit_steps(session: TrainingSession, *, measured_steps: int, warmup_steps: int, objective=None) -> dict:
    """Time lorakit's own optimizer steps (Trainer.step, as `lorakit train` runs them: the next step's batches are
    collated during this step's backward) after a warm-up. An out-of-memory error ends the row (no re-plan)."""
    examples = session.data.splits.train
    lengths, targets = [], []

    class Measured(TrainerHooks):
        def step_finished(self, trainer, step, groups):
            if step > warmup_steps:
                chosen = [examples[i] for group in groups for i in group]
                lengths.extend(len(e.input_ids) for e in chosen)
                targets.extend(sum(label != IGNORE_INDEX for label in e.labels[1:]) for e in chosen)

    trainer = Trainer(session, Path("unused-run-dir"), scaler=None, objective=objective, hooks=Measured(),
                      recover_from_oom=False)  # (it saves nothing: no checkpoint is written by step())
    gc.collect()
    torch.cuda.empty_cache()
    baseline = torch.cuda.memory_allocated()  # weights and anything an earlier row left behind
    torch.cuda.reset_peak_memory_stats()
    for index in range(warmup_steps + measured_steps):
        if index == warmup_steps:
            torch.cuda.synchronize()
            start = time.perf_counter()
        trainer.step()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    result = {"seconds": seconds, "steps": measured_steps, "lengths": lengths, "targets": targets,
              "peak_allocated": torch.cuda.max_memory_allocated(), "peak_reserved": torch.cuda.max_memory_reserved(),
              "allocated_before": baseline}
    trainer.optimizer.zero_grad(set_to_none=True)
    del trainer
    return result


def planned(config: RunConfig, model_dir: str, memory_bytes: int | None):
    model_config = json.loads((Path(model_dir) / "config.json").read_text())
    return resolve_auto_settings(config, model_config, cuda=True, dtype_bytes=2, nf4_available=True,
                                 memory_bytes=memory_bytes), model_config


def predicted_peak(model_config: dict, config: RunConfig, checkpointed_layers: int, offload: bool, fused: bool) -> int:
    settings = TrainSettings(
        quantization=config.model.quantization, dtype_bytes=2, lora_rank=config.lora.r,
        lora_targets=config.lora.target_modules if config.lora.target_modules == "all-linear" else tuple(config.lora.target_modules),
        lora_dropout=config.lora.dropout > 0, tokens_per_micro_batch=config.training.batch_size * config.model.max_length,
        checkpointed_layers=checkpointed_layers, offload_activations=offload, fused_kernels=fused,
        kv_expanded=expands_kv_heads())
    return estimate_peak_memory(ModelShape.from_config(model_config), settings).peak_allocated


class Bench:
    """Runs rows, records each as a JSON line as soon as it is measured (a timeout keeps what was done)."""

    def __init__(self, out: Path, shape: dict, tflops: float):
        self.out, self.shape, self.tflops, self.rows = out, shape, tflops, []

    def record(self, name: str, result: dict, **extra) -> None:
        if "seconds" in result:
            flops, flops_targets = useful_flops(self.shape, result["lengths"], result["targets"])
            tokens = sum(result["lengths"])
            result.update(tokens=tokens, tokens_per_s=tokens / result["seconds"],
                          s_per_step=result["seconds"] / result["steps"],
                          mfu=flops / result["seconds"] / (self.tflops * 1e12),
                          mfu_targets=flops_targets / result["seconds"] / (self.tflops * 1e12))
        row = {"name": name, **{k: v for k, v in result.items() if k not in ("lengths", "targets")}, **extra}
        self.rows.append(row)
        with open(self.out / "rows.jsonl", "a") as handle:
            handle.write(json.dumps(row) + "\n")
        print("ROW", json.dumps(row), flush=True)

    def guarded(self, name: str, run, **extra) -> None:
        try:
            self.record(name, run(), **extra)
        except torch.OutOfMemoryError as exc:
            self.record(name, {"error": f"out of memory: {str(exc)[:120]}"}, **extra)
        gc.collect()
        torch.cuda.empty_cache()


def session_for(config: RunConfig, model, tokenizer, examples, *, quantized: bool, offload: bool):
    data = PreparedData(splits=Splits(train=examples, validation=[], test=[]), data_sha256="synthetic", truncated=0,
                        without_targets=0)
    source = resolve_model_source(config.model)
    return TrainingSession(config, source, tokenizer, model, data, torch.device("cuda"), torch.bfloat16,
                                quantized, {}, offload)


class FullLogitLoss(NextTokenObjective):
    """The model's own forward + loss: [tokens, vocab] logits, upcast to fp32 (the ablation of the fused loss)."""

    def loss(self, session, batch, target_tokens):
        return session.model(**batch, use_cache=False, num_items_in_batch=target_tokens).loss


def with_training(config: RunConfig, **training) -> RunConfig:
    return config.model_copy(update={"training": config.training.model_copy(update=training)})


def with_lora(config: RunConfig, **lora) -> RunConfig:
    return config.model_copy(update={"lora": config.lora.model_copy(update=lora)})


def plan_text(resolved) -> dict:
    return {"micro_batch": resolved.config.training.batch_size, "checkpointed_layers": resolved.checkpointed_layers,
            "offload": resolved.offload_activations, "quantization": resolved.config.model.quantization}


PHASES = ("guide", "bf16", "qlora")


def run_phase(phase: str, args, bench: Bench, tokenizer, model_dir: str) -> None:
    """One phase per process, so no phase's leftovers (the HF Trainer keeps references to its model, liger
    patches RoPE module-wide) touch another's memory or code."""
    examples = rendered_examples(tokenizer, 2048, 512, seed=0)
    if phase == "guide":
        guide_steps = dict(measured_steps=1, warmup_steps=1) if args.smoke else dict(measured_steps=8, warmup_steps=1)
        bench.guarded("(a) guide recipe", lambda: run_guide_recipe(model_dir, tokenizer, examples, **guide_steps))
    elif phase == "bf16":
        run_bf16_rows(args, bench, tokenizer, model_dir, examples)
    else:
        run_qlora_rows(args, bench, tokenizer, model_dir, examples)


def run_bf16_rows(args, bench: Bench, tokenizer, model_dir: str, examples) -> None:
    """(c) bf16 LoRA, built up one optimisation at a time on one loaded model."""
    cuda, bf16 = torch.device("cuda"), torch.bfloat16
    steps = dict(measured_steps=2, warmup_steps=1) if args.smoke else dict(measured_steps=6, warmup_steps=3)
    from lorakit.model.adapters import attach_lora
    from lorakit.model.attention import use_varlen_attention

    resolved, model_config = planned(lorakit_config(model_dir, 512, quantization="none"), model_dir, None)
    config = resolved.config
    model = load_base_model(resolve_model_source(config.model), config.model, cuda, bf16, None)
    model = attach_lora(model, config.lora, quantized=False, gradient_checkpointing=False)
    use_varlen_attention(model)
    apply_checkpointing(model, resolved.checkpointed_layers, reentrant=resolved.offload_activations)
    session = session_for(config, model, tokenizer, examples, quantized=False, offload=resolved.offload_activations)
    bench.guarded("(c0) bf16 LoRA packed; PyTorch modules, full-logit loss",
                  lambda: run_lorakit_steps(session, **steps, objective=FullLogitLoss()), **plan_text(resolved))
    predicted = predicted_peak(model_config, config, resolved.checkpointed_layers, resolved.offload_activations, fused=False)
    bench.guarded("(c1) = c0 + fused linear cross-entropy", lambda: run_lorakit_steps(session, **steps),
                  predicted=predicted, **plan_text(resolved))
    skip_fp32_input_copies(model)
    bench.guarded("(c2) = c1 + LoRA inputs kept in bf16", lambda: run_lorakit_steps(session, **steps),
                  predicted=predicted, **plan_text(resolved))
    kernels.apply_fused_kernels(model.get_base_model(), cuda)
    predicted = predicted_peak(model_config, config, resolved.checkpointed_layers, resolved.offload_activations, fused=True)
    bench.guarded("(c) lorakit bf16 LoRA = c2 + liger RMSNorm/RoPE/SwiGLU", lambda: run_lorakit_steps(session, **steps),
                  predicted=predicted, **plan_text(resolved))
    for module in model.modules():  # what `lora.dropout: 0` builds: no dropout masks or copies
        if hasattr(module, "lora_dropout"):
            module.lora_dropout["default"] = torch.nn.Identity()
    no_dropout = with_lora(config, dropout=0.0)
    predicted = predicted_peak(model_config, no_dropout, resolved.checkpointed_layers, resolved.offload_activations, fused=True)
    bench.guarded("(c3) = c with lora.dropout 0 (not the default)", lambda: run_lorakit_steps(session, **steps),
                  predicted=predicted, **plan_text(resolved))
    bigger = dataclasses.replace(resolved, config=with_training(no_dropout, batch_size=32))
    session = session_for(bigger.config, model, tokenizer, examples, quantized=False, offload=False)
    predicted = predicted_peak(model_config, bigger.config, None, False, fused=True)
    bench.guarded("(c4) = c3 at 16,384 tokens per micro-batch (not planned)", lambda: run_lorakit_steps(session, **steps),
                  predicted=predicted, **plan_text(bigger))


def run_qlora_rows(args, bench: Bench, tokenizer, model_dir: str, examples) -> None:
    """(b) QLoRA through make_trainable, the path `lorakit train` takes; then other plans on the same model."""
    cuda, bf16 = torch.device("cuda"), torch.bfloat16
    steps = dict(measured_steps=2, warmup_steps=1) if args.smoke else dict(measured_steps=6, warmup_steps=3)
    resolved, model_config = planned(lorakit_config(model_dir, 512, quantization="nf4"), model_dir, None)
    config = resolved.config
    model = load_base_model(resolve_model_source(config.model), config.model, cuda, bf16, nf4_config(bf16))
    model = make_trainable(model, config, device=cuda, quantized=True, checkpointed_layers=resolved.checkpointed_layers,
                           offload_activations=resolved.offload_activations)

    def qlora_row(name: str, resolved, rows, predict: bool = True):
        apply_checkpointing(model, resolved.checkpointed_layers, reentrant=resolved.offload_activations)
        session = session_for(resolved.config, model, tokenizer, rows, quantized=True, offload=resolved.offload_activations)
        prediction = predicted_peak(model_config, resolved.config, resolved.checkpointed_layers,
                                    resolved.offload_activations, fused=True) if predict else None
        long_steps = dict(measured_steps=2, warmup_steps=1) if args.smoke else dict(measured_steps=3, warmup_steps=1)
        bench.guarded(name, lambda: run_lorakit_steps(session, **(steps if rows is examples else long_steps)),
                      predicted=prediction, **plan_text(resolved))

    qlora_row("(b) lorakit QLoRA, planned for this GPU", resolved, examples)
    unpacked = dataclasses.replace(resolved, config=with_training(config, packing=False))
    qlora_row("(b0) = b without packing (pad to longest)", unpacked, examples, predict=False)
    eight = 8 * GIB
    for length in (2048, 4096):
        config_long = with_training(lorakit_config(model_dir, length, quantization="nf4"), batch_size=1)
        resolved_long, model_config = planned(config_long, model_dir, eight)
        rows = rendered_examples(tokenizer, 12, length, seed=length, answer_median_words=length, sigma=0.05)
        qlora_row(f"(L{length}) QLoRA max_length {length}, micro-batch 1, planned for 8 GiB", resolved_long, rows)
    offloaded = dataclasses.replace(resolved_long, checkpointed_layers=model_config["num_hidden_layers"],
                                    offload_activations=True)
    qlora_row("(L4096o) = L4096 with checkpointed inputs offloaded to CPU", offloaded, rows)
    resolved8, _ = planned(lorakit_config(model_dir, 512, quantization="nf4"), model_dir, eight)
    qlora_row("(b8) lorakit QLoRA, planned for 8 GiB", resolved8, examples)
    no_offload = dataclasses.replace(resolved8, offload_activations=False)
    qlora_row("(b8n) = b8 without offload (the planner predicts it does not fit 8 GiB)", no_offload, examples)


def print_table(bench: Bench, out: Path) -> None:
    base = next((r for r in bench.rows if r["name"].startswith("(a)") and "tokens_per_s" in r), None)
    header = ("| row | trained tok/s | s/step | tok/step | peak GiB (alloc) | peak GiB (reserved) | MFU | MFU* | "
              "tok/s vs (a) | peak vs (a) | plan (micro-batch, ckpt layers, offload) | planner GiB | planner error | GiB at start |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in bench.rows:
        if "error" in r:
            lines.append(f"| {r['name']} | {r['error']} |" + " |" * 12)
            continue
        alloc, reserved = r["peak_allocated"] / GIB, r["peak_reserved"] / GIB
        ratio = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else "-"
        peak_ratio = f"{r['peak_allocated'] / base['peak_allocated']:.2f}x" if base else "-"
        plan = f"{r['micro_batch']}, {r['checkpointed_layers']}, {r['offload']}" if "micro_batch" in r else "-"
        predicted = r.get("predicted")
        pred = f"{predicted / GIB:.2f}" if predicted else "-"
        error = f"{(predicted - r['peak_allocated']) / r['peak_allocated']:+.1%}" if predicted else "-"
        start = f"{r['allocated_before'] / GIB:.2f}" if "allocated_before" in r else "-"
        lines.append(f"| {r['name']} | {r['tokens_per_s']:,.0f} | {r['s_per_step']:.3f} | {r['tokens'] / r['steps']:,.0f} | "
                     f"{alloc:.2f} | {reserved:.2f} | {r['mfu']:.1%} | {r['mfu_targets']:.1%} | {ratio} | {peak_ratio} | "
                     f"{plan} | {pred} | {error} | {start} |")
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    print(table, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tokenizer", default=str(Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "smollm2-tokenizer"))
    parser.add_argument("--model-dir", default="/tmp/phi4-mini-random")
    parser.add_argument("--smoke", action="store_true", help="2-layer model, few steps: checks the script runs")
    parser.add_argument("--phase", choices=PHASES, help="internal: run one phase in this process")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    shape = SMOKE if args.smoke else PHI4_MINI
    if args.phase:
        from transformers import AutoTokenizer

        environment = json.loads((args.out / "env.json").read_text())
        bench = Bench(args.out, shape, environment["bf16_matmul_tflops"])
        run_phase(args.phase, args, bench, AutoTokenizer.from_pretrained(args.tokenizer), args.model_dir)
        return
    import bitsandbytes
    import liger_kernel  # noqa: F401  (fail now, not after the baseline)
    import peft
    import transformers
    from transformers import AutoTokenizer

    environment = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
                   "transformers": transformers.__version__, "peft": peft.__version__,
                   "bitsandbytes": bitsandbytes.__version__, "liger_kernel": _version("liger-kernel"),
                   "total_memory_gib": torch.cuda.get_device_properties(0).total_memory / GIB, "smoke": args.smoke}
    environment["bf16_matmul_tflops"] = matmul_tflops()
    print("ENV", json.dumps(environment), flush=True)
    (args.out / "env.json").write_text(json.dumps(environment, indent=2))
    started = time.perf_counter()
    build_random_model(Path(args.model_dir), shape)
    print(f"random model saved in {time.perf_counter() - started:.0f}s", flush=True)
    free, total = torch.cuda.mem_get_info()
    print(f"memory used outside PyTorch's allocator (CUDA context etc.): "
          f"{(total - free - torch.cuda.memory_reserved()) / GIB:.2f} GiB", flush=True)
    lengths = [len(e.input_ids) for e in rendered_examples(AutoTokenizer.from_pretrained(args.tokenizer), 2048, 512, seed=0)]
    print(f"data: {len(lengths)} examples, mean {sum(lengths) / len(lengths):.0f} tokens, "
          f"{sum(lengths) / (512 * len(lengths)):.1%} of 512-padded rows are real tokens", flush=True)
    torch.cuda.empty_cache()
    import subprocess

    for phase in PHASES:
        command = [sys.executable, __file__, "--out", str(args.out), "--tokenizer", args.tokenizer,
                   "--model-dir", args.model_dir, "--phase", phase] + (["--smoke"] if args.smoke else [])
        print(f"phase {phase}: exit {subprocess.run(command).returncode}", flush=True)
    bench = Bench(args.out, shape, environment["bf16_matmul_tflops"])
    bench.rows = [json.loads(line) for line in (args.out / "rows.jsonl").read_text().splitlines()]
    print_table(bench, args.out)


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
