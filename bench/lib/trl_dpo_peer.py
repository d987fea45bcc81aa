"""The DPO peer lorakit must beat: TRL 1.16's DPOTrainer set up as its documentation recommends for QLoRA.

QLoRA (nf4 with double quantization, bf16 compute) or bf16 LoRA, with peft's LoRA r16/alpha32/dropout 0.05 on all
linear layers (lorakit's defaults) passed as `peft_config`, so the reference model is the same weights with the
adapter switched off (TRL's `use_adapter(model, None)`; no second copy). Conversational prompt/chosen/rejected
data; `loss_type=["sigmoid"]`, beta 0.1 (both TRL's defaults and lorakit's). bf16, gradient checkpointing where
the row asks for it, `use_liger_kernel=True` on CUDA (liger's RMSNorm/RoPE/SwiGLU layer kernels; TRL 1.16's DPO
always scores log-probs with its own chunked "fused LM head", so no full-vocabulary logits, and refuses liger's
fused linear cross-entropy: there is no `use_liger_loss` in TRL 1.16's DPOConfig any more). Not used, because
TRL 1.16 cannot: `padding_free` ("temporarily unavailable since the DPO refactor": setting it warns and pads
anyway). So every micro-batch is 2 x micro_batch rows (chosen, then rejected) padded to its longest row. Attention:
`sdpa` (padded rows; flash-attn has no wheel for the device's Python 3.12 / torch 2.11).

    python bench/lib/trl_dpo_peer.py --model DIR --data pairs.jsonl --out RESULT.json --micro-batch 4 \\
        --accumulation 2 [--cap-gib 7.25] [--no-checkpointing] ...

Allocator: the same settings as `lorakit train` (expandable segments). tokens/s is the median over the measured
optimizer steps of (real, non-pad tokens of the step's chosen and rejected rows, prompt and answer) / (step wall
time, CUDA synced; TRL fetches a step's batches before `on_step_begin`, so data loading is outside its time).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for lib.capped_run
from lib.capped_run import cap_allocator  # noqa: E402
from lib.step_clock import step_clock  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--max-length", type=int, default=1024, help="prompt + answer tokens per row (TRL's max_length)")
    parser.add_argument("--micro-batch", type=int, default=4, help="pairs per forward pass (2x rows)")
    parser.add_argument("--accumulation", type=int, default=2, help="micro-batches per optimizer step")
    parser.add_argument("--quantization", choices=("nf4", "none"), default="nf4")
    parser.add_argument("--checkpointing", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--cap-gib", type=float, default=None)
    parser.add_argument("--smoke", action="store_true", help="CPU, fp32: no nf4 or liger")
    args = parser.parse_args()
    cuda = torch.cuda.is_available() and not args.smoke
    if cuda:
        from lorakit.runtime.device import use_expandable_segments

        use_expandable_segments()  # before CUDA starts, exactly as `lorakit train` does
        if args.cap_gib is not None:
            cap_allocator(args.cap_gib, lorakit_settings=False)  # the allocator settings are the ones chosen above

    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import DPOConfig, DPOTrainer

    model_kwargs = {"dtype": torch.bfloat16 if cuda else torch.float32, "attn_implementation": "sdpa"}
    if cuda:
        model_kwargs["device_map"] = {"": 0}
        if args.quantization == "nf4":
            model_kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16)
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.model, **model_kwargs)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    dataset = load_dataset("json", data_files=args.data, split="train")
    micro_tokens: list[int] = []  # real tokens of each micro-batch, in order
    micro_labelled: list[int] = []
    micro_padded: list[int] = []
    step_seconds: list[float] = []

    class CountingTrainer(DPOTrainer):
        """Counts each micro-batch's real tokens (attention mask), answer tokens and padded positions."""

        def training_step(self, model, inputs, num_items_in_batch=None):
            micro_tokens.append(int(inputs["attention_mask"].sum()))
            micro_labelled.append(int(inputs["completion_mask"].sum()))
            micro_padded.append(inputs["input_ids"].numel())
            return super().training_step(model, inputs, num_items_in_batch)

    config = DPOConfig(
        output_dir="/tmp/trl-dpo-peer", max_length=args.max_length, padding_free=False,
        per_device_train_batch_size=args.micro_batch, gradient_accumulation_steps=args.accumulation,
        gradient_checkpointing=args.checkpointing, use_liger_kernel=cuda, bf16=cuda, use_cpu=not cuda,
        beta=0.1, loss_type=["sigmoid"], learning_rate=1e-5, lr_scheduler_type="constant",
        max_steps=args.warmup + args.steps, logging_steps=1, save_strategy="no", report_to=[],
        dataloader_num_workers=0, seed=0, disable_tqdm=True,
    )
    peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                             task_type="CAUSAL_LM")
    trainer = CountingTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                              peft_config=peft_config, callbacks=[step_clock(step_seconds, cuda)])
    setup_seconds = time.perf_counter() - started
    tokenized = trainer.train_dataset  # TRL's own tokenization: prompt_ids, chosen_ids, rejected_ids per pair
    pair_tokens = [2 * len(p) + len(c) + len(r) for p, c, r in zip(
        tokenized["prompt_ids"], tokenized["chosen_ids"], tokenized["rejected_ids"])]
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    per_step = [slice(i * args.accumulation, (i + 1) * args.accumulation) for i in range(len(step_seconds))]
    tokens = [sum(micro_tokens[s]) for s in per_step][args.warmup:]
    seconds = step_seconds[args.warmup:]
    rates = [t / s for t, s in zip(tokens, seconds)]
    result = {
        "tokens_per_second": statistics.median(rates), "measured_steps": len(rates),
        "tokens_per_step": statistics.mean(tokens), "step_tokens": tokens,
        "step_labelled": [sum(micro_labelled[s]) for s in per_step][args.warmup:],
        "step_padded": [sum(micro_padded[s]) for s in per_step][args.warmup:],
        "mean_tokens_per_pair": statistics.mean(pair_tokens), "micro_batch": args.micro_batch, "accumulation": args.accumulation,
        "attention": model.config._attn_implementation, "checkpointing": args.checkpointing,
        "liger_kernel": cuda, "padding_free": trainer.padding_free,
        "seconds_per_step": statistics.median(seconds), "setup_seconds": setup_seconds,
        "peak_allocated": torch.cuda.max_memory_allocated(0) if cuda else None,
        "peak_reserved": torch.cuda.max_memory_reserved(0) if cuda else None,
        "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
        "reward_margins": [h.get("rewards/margins") for h in trainer.state.log_history if "loss" in h],
        "versions": {name: __import__(name).__version__ for name in ("trl", "transformers", "peft", "torch")},
    }
    with open(args.out, "w") as handle:
        json.dump(result, handle)
    print(json.dumps({k: v for k, v in result.items() if k not in ("losses", "reward_margins")}))


if __name__ == "__main__":
    main()
