"""Benchmark: data check and tokenization speed of this checkout against an earlier commit, in one run.

The one-renderer change (answers located per template, supervised tokens decoded and checked) must not slow
the data path. This script exports the baseline commit's `src/` with `git archive`, generates N examples
once (bench/data_check.py's generator), and runs, in fresh processes, interleaved, best of `--repeats`:
  - `data check` with token lengths: `lorakit.data.validate.check_files`;
  - tokenization: `read_conversations` + `render_batch` in batches of 512 (ids and assistant labels);
for the baseline and for this checkout, and checks that both produce the same token ids and labels.

    python bench/render_before_after.py [--examples 20000] [--baseline bc11f75] [--out bench/results/...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from data_check import MAX_LENGTH, TOKENIZER, generate  # noqa: E402
from lib.tables import aligned_row, print_report  # noqa: E402

_WIDTHS = (62, 7, 8, 8, 13, 11)  # what, measure, before, after, after/before, after ex/s


def child(path: str) -> None:
    """Run with PYTHONPATH at one src/ tree: time check and tokenization, hash what tokenization produced."""
    from transformers import AutoTokenizer

    from lorakit.config import DEFAULT_SYSTEM_PROMPT
    from lorakit.data.records import read_conversations
    from lorakit.data.validate import check_files

    try:  # this checkout: one renderer in render.py; the baseline kept the batched one in batch_render.py
        from lorakit.data.render import render_batch
    except ImportError:
        from lorakit.data.batch_render import render_batch
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    start, cpu = time.perf_counter(), time.process_time()
    report = check_files([path], tokenizer=tokenizer, max_length=MAX_LENGTH, system_prompt=DEFAULT_SYSTEM_PROMPT)
    check_s, check_cpu = time.perf_counter() - start, time.process_time() - cpu
    start, cpu = time.perf_counter(), time.process_time()
    conversations = list(read_conversations(path))
    digest, produced = hashlib.sha256(), 0
    for begin in range(0, len(conversations), 512):
        for example in render_batch(conversations[begin:begin + 512], tokenizer, DEFAULT_SYSTEM_PROMPT, MAX_LENGTH):
            digest.update(json.dumps([example.input_ids, example.labels]).encode())
            produced += 1
    tokenize_s, tokenize_cpu = time.perf_counter() - start, time.process_time() - cpu
    print(json.dumps({"check_s": check_s, "tokenize_s": tokenize_s, "check_cpu": check_cpu,
                      "tokenize_cpu": tokenize_cpu, "examples": produced,
                      "check_examples": report.examples, "sha256": digest.hexdigest(), "module": render_batch.__module__}))


def measure(src: Path, path: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "TOKENIZERS_PARALLELISM": "true"}
    result = subprocess.run([sys.executable, __file__, "--child", str(path)], env=env, check=True,
                            capture_output=True, text=True, cwd=tempfile.gettempdir())
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=20_000)
    parser.add_argument("--baseline", default="bc11f75", help="Commit to compare with (before the change).")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    with tempfile.TemporaryDirectory() as tmp:
        baseline_src = Path(tmp) / "baseline"
        baseline_src.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", args.baseline, "src"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(baseline_src)], input=archive, check=True)
        data = Path(tmp) / "data.jsonl"
        generate(data, args.examples)
        trees = {"before": baseline_src / "src", "after": REPO / "src"}
        runs: dict[str, list[dict]] = {name: [] for name in trees}
        for _ in range(args.repeats):  # interleaved, best of each: fair on a shared machine
            for name, src in trees.items():
                runs[name].append(measure(src, data))
    keys = ("check_s", "tokenize_s", "check_cpu", "tokenize_cpu")
    best = {name: {key: min(r[key] for r in rows) for key in keys} for name, rows in runs.items()}
    same = len({r["sha256"] for rows in runs.values() for r in rows}) == 1
    n = args.examples
    lines = [
        f"lorakit bench/render_before_after.py: {n} examples, tokenizer {TOKENIZER.name} (ChatML), max_length "
        f"{MAX_LENGTH}; before = commit {args.baseline} ({runs['before'][0]['module']}.render_batch), after = this "
        f"checkout ({runs['after'][0]['module']}.render_batch)",
        f"machine: {os.cpu_count()} CPU cores (shared), python {sys.version.split()[0]}; best of {args.repeats} "
        "interleaved runs, each in a fresh process; CPU s = process CPU time (all threads), steadier than wall "
        "time when other work shares the cores",
        f"identical token ids and labels before and after: {'yes' if same else 'NO'}",
        "",
        aligned_row(["what", "measure", "before", "after", "after/before", "after ex/s"], _WIDTHS),
    ]
    for key, name in (("check", "data check (parse, formats, PHI, duplicates, token lengths)"),
                      ("tokenize", "tokenize: read + render_batch (ids + checked assistant labels)")):
        for unit, label in (("_s", "wall s"), ("_cpu", "CPU s")):
            before, after = best["before"][key + unit], best["after"][key + unit]
            lines.append(aligned_row([name, label, f"{before:.2f}", f"{after:.2f}", f"{after / before:.2f}x",
                                      f"{n / after:.0f}"], _WIDTHS))
    print_report(lines, args.out)


if __name__ == "__main__":
    main()
