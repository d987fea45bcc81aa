"""Claim: `lorakit eval --knowledge` scores the same items exactly as lm-evaluation-harness does.

Both score the same loaded model (the run's base model with the adapter switched off, then the fine-tuned one)
on the same items, the same prompt (lorakit's item_text as lm-eval's doc_to_text), the same system prompt and
chat template (lm-eval's apply_chat_template + system_instruction) and the same choices (the option letters):
lm-eval through a custom task YAML over a local JSONL file, lorakit through evaluation/knowledge.py. The script
prints both accuracies per benchmark and model, how many items chose differently, and the largest gap in
points (the claim: at most 0.5).

    pip install lm-eval   # into the venv, for this script only
    python bench/knowledge_vs_lm_eval.py RUN_DIR --limit 100 | tee bench/results/knowledge_vs_lm_eval.txt

Note that lm-eval moves the context's trailing newline (after the assistant header) into the continuation, so
its log-likelihoods include log P("\\n") + log P(letter): the same constant for every option of an item, so the
chosen option cannot differ, only the absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch


def lm_eval_accuracy(model, tokenizer, system_prompt: str, items, workdir: Path, name: str) -> list[bool]:
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from lorakit.evaluation.knowledge_items import LETTERS, item_text

    data = workdir / f"{name}.jsonl"
    data.write_text("".join(json.dumps({"id": i.id, "prompt": item_text(i), "letters": list(LETTERS[:len(i.choices)]),
                                        "answer": i.answer}) + "\n" for i in items))
    (workdir / f"{name}.yaml").write_text(
        f"task: lorakit_{name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: \"{{prompt}}\"\n"
        "doc_to_choice: \"{{letters}}\"\ndoc_to_target: \"{{answer}}\"\ntarget_delimiter: \"\"\n"
        "metric_list:\n  - metric: acc\n")
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=8, device="cpu")
    result = simple_evaluate(model=lm, tasks=[f"lorakit_{name}"], task_manager=TaskManager(include_path=str(workdir)),
                             num_fewshot=0, apply_chat_template=True, system_instruction=system_prompt,
                             log_samples=True, bootstrap_iters=0)
    samples = sorted(result["samples"][f"lorakit_{name}"], key=lambda s: s["doc_id"])
    return [bool(s["acc"]) for s in samples]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--limit", type=int, default=100, help="items per benchmark (the same seeded sample as "
                        "`lorakit eval --knowledge --limit N`)")
    args = parser.parse_args()

    from lorakit.evaluation.knowledge import prompt_ids, score_items
    from lorakit.evaluation.knowledge_items import BENCHMARKS, select_items
    from lorakit.evaluation.knowledge_model import scoring_model
    from lorakit.inference.generate import load_run

    run = load_run(args.run_dir)
    print(f"run {args.run_dir}; base model {run.config.model.name}; device {run.device}; "
          f"{args.limit} items per benchmark; torch {torch.__version__}")
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for which in ("base", "tuned"):
            for name in BENCHMARKS:
                items = select_items(name, args.limit)
                started = time.perf_counter()
                prompts = prompt_ids(items, run.tokenizer, run.system_prompt)
                # lorakit as `lorakit eval --knowledge` scores (the tuned adapter merged into a copy);
                # lm-eval below scores the loaded peft model, adapter unmerged (switched off for the base model).
                with scoring_model(run.model, which) as model:
                    mine = [s.correct for s in score_items(model, run.tokenizer, items, prompts, run.device)]
                lorakit_s = time.perf_counter() - started
                started = time.perf_counter()
                with run.model.disable_adapter() if which == "base" else nullcontext():
                    theirs = lm_eval_accuracy(run.model.get_base_model(), run.tokenizer, run.system_prompt, items,
                                              Path(tmp), f"{which}_{name}")
                lm_eval_s = time.perf_counter() - started
                gap = 100 * abs(sum(mine) - sum(theirs)) / len(items)
                worst = max(worst, gap)
                differ = sum(a != b for a, b in zip(mine, theirs))
                print(f"{which:5} {name:12} n={len(items):4}  lorakit {100 * sum(mine) / len(items):5.1f}%  "
                      f"lm-eval {100 * sum(theirs) / len(items):5.1f}%  gap {gap:.2f} pts  items scored "
                      f"differently {differ}  (lorakit {lorakit_s:.0f}s, lm-eval {lm_eval_s:.0f}s)", flush=True)
    print(f"largest gap: {worst:.2f} points ({'within' if worst <= 0.5 else 'OVER'} the 0.5-point claim)")


if __name__ == "__main__":
    main()
