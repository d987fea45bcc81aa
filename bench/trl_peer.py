"""The peer lorakit must beat: TRL's SFTTrainer set up as its documentation recommends for speed and memory.

QLoRA (nf4, bf16 compute) or bf16 LoRA, LoRA r16/alpha32/dropout 0.05 on all linear layers (lorakit's
defaults), prompt-completion data (loss on the completion only, as lorakit), `packing=True` with the `bfd`
strategy (padding-free), `use_liger_kernel=True`, `attn_implementation="flex_attention"`, bf16, gradient
checkpointing where the row asks for it. One process per row (bench/peer_speed.py starts it):

    python bench/trl_peer.py --model DIR --data prompt_completion.jsonl --out RESULT.json [--cap-gib 7.3] ...

tokens/s is the median over measured steps of (real tokens in the step) / (step wall time, CUDA synced);
padding-free packing has no pad tokens, so every input id is a real token.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from capped_run import cap_allocator  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--rows", type=int, default=16, help="packed rows of max_length per step")
    parser.add_argument("--quantization", choices=("nf4", "none"), default="nf4")
    parser.add_argument("--checkpointing", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--cap-gib", type=float, default=None)
    parser.add_argument("--smoke", action="store_true", help="CPU: no nf4, liger or flex attention")
    args = parser.parse_args()
    cuda = torch.cuda.is_available() and not args.smoke
    if cuda and args.cap_gib is not None:
        cap_allocator(args.cap_gib, lorakit_settings=False)  # TRL with PyTorch's own allocator settings

    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    model_kwargs = {"dtype": torch.bfloat16 if cuda else torch.float32,
                    "attn_implementation": "flex_attention" if cuda else "sdpa"}
    if args.quantization == "nf4" and cuda:
        model_kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
        model_kwargs["device_map"] = {"": 0}
    elif cuda:
        model_kwargs["device_map"] = {"": 0}
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.model, **model_kwargs)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    dataset = load_dataset("json", data_files=args.data, split="train")
    step_tokens: list[int] = []
    step_seconds: list[float] = []

    class CountingTrainer(SFTTrainer):
        """Counts each step's real tokens (padding-free rows hold no pad)."""

        def training_step(self, model, inputs, num_items_in_batch=None):
            mask = inputs.get("attention_mask")
            step_tokens.append(int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel()))
            return super().training_step(model, inputs, num_items_in_batch)

    class Clock(TrainerCallback):
        def on_step_begin(self, args_, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            self.start = time.perf_counter()

        def on_step_end(self, args_, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            step_seconds.append(time.perf_counter() - self.start)

    config = SFTConfig(
        output_dir="/tmp/trl-peer", max_length=args.max_length, packing=True, packing_strategy="bfd",
        per_device_train_batch_size=args.rows, gradient_accumulation_steps=1,
        gradient_checkpointing=args.checkpointing, use_liger_kernel=cuda, bf16=cuda,
        learning_rate=1e-4, lr_scheduler_type="constant", max_steps=args.warmup + args.steps, logging_steps=1,
        save_strategy="no", report_to=[], dataloader_num_workers=0, seed=0, disable_tqdm=True,
        completion_only_loss=True,
    )
    peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                             task_type="CAUSAL_LM")
    trainer = CountingTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                              peft_config=peft_config, callbacks=[Clock()])
    setup_seconds = time.perf_counter() - started
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    rates = [t / s for t, s in zip(step_tokens[args.warmup:], step_seconds[args.warmup:])]
    result = {
        "tokens_per_second": statistics.median(rates), "measured_steps": len(rates),
        "tokens_per_step": statistics.mean(step_tokens[args.warmup:]),
        "seconds_per_step": statistics.median(step_seconds[args.warmup:]),
        "setup_seconds": setup_seconds,
        "peak_allocated": torch.cuda.max_memory_allocated(0) if cuda else None,
        "peak_reserved": torch.cuda.max_memory_reserved(0) if cuda else None,
        "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
        "versions": {name: __import__(name).__version__ for name in ("trl", "transformers", "peft", "torch")},
    }
    with open(args.out, "w") as handle:
        json.dump(result, handle)
    print(json.dumps({k: v for k, v in result.items() if k != "losses"}))


if __name__ == "__main__":
    main()
