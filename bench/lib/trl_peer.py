"""The peer lorakit must beat: TRL's SFTTrainer set up as its documentation recommends for speed and memory.

QLoRA (nf4, bf16 compute) or bf16 LoRA, LoRA r16/alpha32/dropout 0.05 on all linear layers (lorakit's
defaults), prompt-completion data (loss on the completion only, as lorakit), `packing=True` with the `bfd`
strategy (padding-free), `use_liger_kernel=True` (liger's RMSNorm/RoPE/SwiGLU; TRL 1.16 switches liger's fused
linear cross-entropy off and scores only the labelled positions with its own chunked LM head), bf16, gradient
checkpointing (and, for long examples, its activation offloading) where the row asks for it. One process per
row (bench/peer_speed.py and bench/long_context.py start it):

    python bench/lib/trl_peer.py --model DIR --data prompt_completion.jsonl --out RESULT.json [--cap-gib 7.25] ...

Attention: `flex_attention` for packed rows. TRL's docs name FlashAttention for padding-free packing, but
flash-attn has no binary wheel on PyPI for the device's Python 3.12 / torch 2.11 (source only), so the packed
rows use flex attention, which keeps packed examples apart through transformers' document mask. Unpacked rows
(one long example) use `sdpa`, whose causal path is PyTorch's own FlashAttention-2 kernel.

Allocator: the same settings as `lorakit train` (expandable segments) unless `--allocator default`.

tokens/s is the median over measured steps of (real tokens in the step) / (step wall time, CUDA synced);
padding-free packing has no pad tokens, so every input id is a real token. Each measured step also records its
labelled positions (those that predict a completion token: where the LM head runs) and the sum of its
examples' squared lengths (attention work), for bench/lib/flops.py.
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
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--rows", type=int, default=16, help="packed rows (bins) of max_length per step")
    parser.add_argument("--packing", action=argparse.BooleanOptionalAction, default=True,
                        help="--no-packing: one example per row, as long as it is (the long-example rows)")
    parser.add_argument("--activation-offloading", action="store_true", help="TRL's activation offloading to CPU")
    parser.add_argument("--allocator", choices=("lorakit", "default"), default="lorakit",
                        help="lorakit: expandable segments, as `lorakit train` sets them; default: PyTorch's own")
    parser.add_argument("--quantization", choices=("nf4", "none"), default="nf4")
    parser.add_argument("--checkpointing", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--cap-gib", type=float, default=None)
    parser.add_argument("--smoke", action="store_true", help="CPU: no nf4, liger or flex attention")
    args = parser.parse_args()
    cuda = torch.cuda.is_available() and not args.smoke
    if cuda and args.allocator == "lorakit":
        from lorakit.runtime.device import use_expandable_segments

        use_expandable_segments()  # before CUDA starts, exactly as `lorakit train` does
    if cuda and args.cap_gib is not None:
        cap_allocator(args.cap_gib, lorakit_settings=False)  # the allocator settings are the ones chosen above

    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    attention = "flex_attention" if cuda and args.packing else "sdpa"
    model_kwargs = {"dtype": torch.bfloat16 if cuda else torch.float32, "attn_implementation": attention}
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
    step_labelled: list[int] = []
    step_square_lengths: list[int] = []
    step_seconds: list[float] = []

    class CountingTrainer(SFTTrainer):
        """Counts each step's real tokens (padding-free rows hold no pad), labelled positions and squared lengths."""

        def training_step(self, model, inputs, num_items_in_batch=None):
            counts = step_counts(inputs)
            step_tokens.append(counts[0])
            step_labelled.append(counts[1])
            step_square_lengths.append(counts[2])
            return super().training_step(model, inputs, num_items_in_batch)

    config = SFTConfig(
        output_dir="/tmp/trl-peer", max_length=args.max_length, packing=args.packing, packing_strategy="bfd",
        per_device_train_batch_size=args.rows, gradient_accumulation_steps=1,
        gradient_checkpointing=args.checkpointing, activation_offloading=args.activation_offloading and cuda,
        use_liger_kernel=cuda, bf16=cuda,
        learning_rate=1e-4, lr_scheduler_type="constant", max_steps=args.warmup + args.steps, logging_steps=1,
        save_strategy="no", report_to=[], dataloader_num_workers=0, seed=0, disable_tqdm=True,
        completion_only_loss=True,
    )
    peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                             task_type="CAUSAL_LM")
    trainer = CountingTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                              peft_config=peft_config, callbacks=[step_clock(step_seconds, cuda)])
    setup_seconds = time.perf_counter() - started
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    rates = [t / s for t, s in zip(step_tokens[args.warmup:], step_seconds[args.warmup:])]
    result = {
        "tokens_per_second": statistics.median(rates), "measured_steps": len(rates),
        "tokens_per_step": statistics.mean(step_tokens[args.warmup:]),
        "step_tokens": step_tokens[args.warmup:], "step_labelled": step_labelled[args.warmup:],
        "step_square_lengths": step_square_lengths[args.warmup:],
        "attention": model.config._attn_implementation, "allocator": args.allocator,
        "checkpointing": args.checkpointing, "activation_offloading": args.activation_offloading,
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


def step_counts(inputs: dict) -> tuple[int, int, int]:
    """(real tokens, labelled positions, sum of squared example lengths) of one step's batch.

    Padding-free rows carry `cu_seq_lens_q` (example boundaries) and no attention mask; padded rows an attention
    mask (each row one example). A labelled position predicts a label other than -100 (the LM head runs there).

    >>> import torch
    >>> step_counts({"input_ids": torch.ones(1, 5), "labels": torch.tensor([[-100, 2, 3, -100, 5]]),
    ...              "cu_seq_lens_q": torch.tensor([0, 3, 5])})
    (5, 3, 13)
    >>> step_counts({"input_ids": torch.ones(2, 3), "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]]),
    ...              "labels": torch.tensor([[-100, 2, 3], [-100, 4, -100]])})
    (5, 3, 13)
    """
    labelled = int((inputs["labels"][:, 1:] != -100).sum())
    if "cu_seq_lens_q" in inputs:
        lengths = inputs["cu_seq_lens_q"].diff().tolist()
    elif inputs.get("attention_mask") is not None:
        lengths = inputs["attention_mask"].sum(dim=1).tolist()
    else:
        lengths = [inputs["input_ids"].shape[1]] * inputs["input_ids"].shape[0]
    return int(sum(lengths)), labelled, int(sum(n * n for n in lengths))


if __name__ == "__main__":
    main()
