"""Claim: how fast `lorakit eval --knowledge` scores on this machine, and what merging and bfloat16 change.

For a seeded sample (--limit N per benchmark, the same sample as `lorakit eval --knowledge --limit N`) it scores
every benchmark with the base and the fine-tuned model four ways: the tuned adapter unmerged (the peft path chat
uses), merged into a copy (the default since this bench), and both in bfloat16. It prints tokens per CPU-second
(CPU time, so that other people's jobs on a shared machine inflate it less than wall time; the load average is
printed too), and for each variant against the unmerged fp32 reference: the items whose chosen letter changes
and the largest log-probability difference.

    python bench/knowledge_speed.py RUN_DIR --limit 40 | tee bench/results/knowledge_speed.txt
"""

from __future__ import annotations

import argparse
import os
import time
from contextlib import nullcontext

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--variants", default="unmerged,merged,bfloat16")
    args = parser.parse_args()

    from lorakit.evaluation.knowledge import prompt_ids, score_items, shared_prefix_length
    from lorakit.evaluation.knowledge_items import BENCHMARKS, select_items
    from lorakit.evaluation.knowledge_model import scoring_model
    from lorakit.inference.generate import load_run

    run = load_run(args.run_dir)
    print(f"run {args.run_dir}; {args.limit} items per benchmark; torch {torch.__version__}; "
          f"{torch.get_num_threads()} threads; {os.cpu_count()} CPUs")
    chosen = {name: select_items(name, args.limit) for name in BENCHMARKS}
    prompts = {name: prompt_ids(chosen[name], run.tokenizer, run.system_prompt) for name in BENCHMARKS}
    tokens = sum(len(p) - shared_prefix_length(ps) for ps in prompts.values() for p in ps)
    print(f"tokens after each benchmark's shared prefix: {tokens} per model")
    reference: dict[tuple[str, str], list] = {}
    for variant in args.variants.split(","):
        for which in ("base", "tuned"):
            if variant == "unmerged":
                context = run.model.disable_adapter() if which == "base" else nullcontext()
                model_context = _yielding(run.model, context)
            else:
                model_context = scoring_model(run.model, which, "bfloat16" if variant == "bfloat16" else "model")
            load = os.getloadavg()[0]
            wall, cpu = time.perf_counter(), time.process_time()
            with model_context as model:
                scored = {name: score_items(model, run.tokenizer, chosen[name], prompts[name], run.device)
                          for name in BENCHMARKS}
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            line = (f"{variant:9s} {which:5s} wall {wall:7.1f} s  cpu {cpu:7.1f} s  {tokens / cpu:6.0f} tokens/CPU-s  "
                    f"load {load:.1f}->{os.getloadavg()[0]:.1f}")
            for name in BENCHMARKS:
                if variant == "unmerged":
                    reference[which, name] = scored[name]
                    continue
                ref = reference[which, name]
                changed = sum(a.chosen != b.chosen for a, b in zip(ref, scored[name]))
                gap = max(abs(x - y) for a, b in zip(ref, scored[name]) for x, y in zip(a.logprobs, b.logprobs))
                accuracy = (sum(s.correct for s in ref), sum(s.correct for s in scored[name]))
                line += f"\n    {name:13s} answers changed {changed}/{len(ref)}  max |dlogprob| {gap:.2e}  " \
                        f"correct {accuracy[0]} -> {accuracy[1]}"
            print(line, flush=True)


class _yielding:
    def __init__(self, model, context):
        self.model, self.context = model, context

    def __enter__(self):
        self.context.__enter__()
        return self.model

    def __exit__(self, *exc):
        return self.context.__exit__(*exc)


if __name__ == "__main__":
    main()
