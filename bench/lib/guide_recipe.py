"""Baseline (a): the guide's recipe, rebuilt from its description: HF Trainer, nf4 4-bit with fp16 compute
(double quantization), peft's prepare_model_for_kbit_training (fp32 embeddings and norms), LoRA r16/alpha32
on attention, every example padded to 512, batch 4 x accumulation 8, gradient checkpointing, no
mixed-precision flag, DataCollatorForLanguageModeling (labels = input ids, pads ignored).

The guide lists [q_proj, k_proj, v_proj, o_proj], which on Phi-3/Phi-4 adapts only o_proj (the other three
are fused into qkv_proj); we give it the attention it meant, qkv_proj + o_proj."""

from __future__ import annotations

import time

import torch

from lorakit.data.render import TokenizedExample


class _CountingCollator:
    """The guide's collator, recording each example's real (non-pad) length as batches are drawn."""

    def __init__(self, tokenizer):
        from transformers import DataCollatorForLanguageModeling

        self.inner = DataCollatorForLanguageModeling(tokenizer, mlm=False)
        self.lengths: list[list[int]] = []

    def __call__(self, features):
        self.lengths.append([int(sum(f["attention_mask"])) for f in features])
        return self.inner(features)


def run_guide_recipe(model_dir: str, tokenizer, examples: list[TokenizedExample], *, measured_steps: int,
                     warmup_steps: int, max_length: int = 512) -> dict:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import (AutoModelForCausalLM, BitsAndBytesConfig, Trainer, TrainerCallback,
                              TrainingArguments)

    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=torch.float16)
    model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=quantization, device_map={"": 0})
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, bias="none", task_type="CAUSAL_LM",
                                             target_modules=["qkv_proj", "o_proj"]))
    pad = tokenizer.pad_token_id
    rows = [{"input_ids": e.input_ids + [pad] * (max_length - len(e.input_ids)),
             "attention_mask": [1] * len(e.input_ids) + [0] * (max_length - len(e.input_ids))} for e in examples]
    collator = _CountingCollator(tokenizer)
    step_ends: list[float] = []

    class _Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            torch.cuda.synchronize()
            step_ends.append(time.perf_counter())

    arguments = TrainingArguments(
        output_dir="/tmp/guide-recipe", per_device_train_batch_size=4, gradient_accumulation_steps=8,
        gradient_checkpointing=True, max_steps=warmup_steps + measured_steps, learning_rate=2e-4, logging_steps=1,
        save_strategy="no", report_to=[], fp16=False, bf16=False, dataloader_num_workers=0,
        remove_unused_columns=False, seed=42, disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=arguments, train_dataset=rows, data_collator=collator, callbacks=[_Clock()])
    torch.cuda.reset_peak_memory_stats()
    trainer.train()
    micro = arguments.gradient_accumulation_steps
    measured = collator.lengths[warmup_steps * micro : (warmup_steps + measured_steps) * micro]
    seconds = step_ends[-1] - step_ends[warmup_steps - 1]
    lengths = [n for batch in measured for n in batch]
    result = {
        "seconds": seconds,
        "steps": measured_steps,
        "lengths": lengths,
        "targets": [n - 1 for n in lengths],  # the guide trains on every non-pad token, prompt included
        "peak_allocated": torch.cuda.max_memory_allocated(),
        "peak_reserved": torch.cuda.max_memory_reserved(),
        "settings": "HF Trainer, nf4 fp16-compute, fp32 embeddings/norms, LoRA r16 qkv+o, pad 512, 4x8, ckpt all",
    }
    del trainer, model
    return result
