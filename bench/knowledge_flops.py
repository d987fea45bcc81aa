"""Claim: what the whole knowledge pack costs in arithmetic, so a measured rate turns into a time.

Counts, for the run's tokenizer, chat template and system prompt, the tokens `lorakit eval --knowledge` runs
through the model after each benchmark's shared prefix, and the floating-point operations they take: 2 per
weight of every linear layer per token (the LM head runs for one position per item only), plus attention
(QK^T and AV: 4 x context length x hidden size per layer per token, the context including the shared prefix).
No model is run.

    python bench/knowledge_flops.py RUN_DIR
"""

from __future__ import annotations

import argparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    args = parser.parse_args()

    from transformers import AutoConfig

    from lorakit.evaluation.knowledge import prompt_ids, shared_prefix_length
    from lorakit.evaluation.knowledge_items import BENCHMARKS, select_items
    from lorakit.inference.run_source import resolve_run_source
    from lorakit.model.load import load_tokenizer, resolve_model_source

    trained = resolve_run_source(args.run_dir)
    source = resolve_model_source(trained.config.model)
    tokenizer = load_tokenizer(source, trained.config.model)
    config = AutoConfig.from_pretrained(source.directory)
    hidden, layers, inter = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    kv = hidden * config.num_key_value_heads // config.num_attention_heads
    linear = layers * (2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * inter)
    system_prompt = trained.config.data.system_prompt
    total_tokens = total_flops = 0
    print(f"model: hidden {hidden}, layers {layers}, intermediate {inter}, kv width {kv}: "
          f"{linear / 1e6:.1f}M linear weights (LM head: one position per item)")
    for name in BENCHMARKS:
        items = select_items(name, None)
        prompts = prompt_ids(items, tokenizer, system_prompt)
        shared = shared_prefix_length(prompts)
        tokens = sum(len(p) - shared for p in prompts)
        attention = sum(4 * position * hidden * layers for p in prompts for position in range(shared + 1, len(p) + 1))
        flops = 2 * linear * tokens + attention
        total_tokens += tokens
        total_flops += flops
        print(f"{name:13s} {len(items):5d} items  shared prefix {shared:4d}  tokens after it {tokens:8,d}  "
              f"{flops / 1e12:6.1f} TFLOP ({100 * attention / flops:.0f}% attention)")
    print(f"whole pack, one model: {total_tokens:,d} tokens, {total_flops / 1e12:.1f} TFLOP "
          f"({total_flops / total_tokens / 1e6:.0f} MFLOP per token); base + tuned: {2 * total_flops / 1e12:.1f} TFLOP")
    need = 2 * total_flops / (2 * 600)
    print(f"10 minutes on 2 cores needs {need / 1e9:.0f} GFLOP per core-second, sustained")


if __name__ == "__main__":
    main()
