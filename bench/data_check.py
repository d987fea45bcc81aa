"""Benchmark: `lorakit data check` and lorakit tokenization against plain `datasets.map` tokenization.

Generates N instruction/response examples (default 200,000) from the bundled medical Q&A, then measures in
one run, on the same file and tokenizer:
  - baseline: `datasets.load_dataset("json")` + `Dataset.map(batched=True)` applying the chat template and
    the tokenizer (ids only, no loss mask), the usual way;
  - `data check`: `lorakit.data.validate.check_files` with the privacy scan, duplicate detection and the
    token-length check (every example rendered and tokenized);
  - tokenization: `read_conversations` + `render_batch` (ids and assistant-only labels, identical to
    `render_conversation`);
and the peak memory of `data check` in fresh processes on files of N/4 and N examples.

    python bench/data_check.py [--examples 200000] [--repeats 2] [--out bench/results/data_check.txt]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lib.tables import aligned_row, print_report

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = REPO / "tests" / "fixtures" / "smollm2-tokenizer"
MAX_LENGTH = 512
_WIDTHS = (72, 8, 11, 18)  # what, seconds, examples/s, speed vs baseline


def generate(path: Path, count: int, seed: int = 0) -> None:
    """Unique examples: a sample question with a variant number, an answer of 3-6 sentences from the sample set."""
    rows = [json.loads(line) for line in (REPO / "examples" / "medical_qa.jsonl").read_text().splitlines()]
    sentences = [s.strip() + "." for row in rows for s in row["response"].split(".") if len(s.strip()) > 20]
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as handle:
        for index in range(count):
            question = f"{rng.choice(rows)['instruction']} (variant {index})"
            answer = " ".join(rng.sample(sentences, rng.randint(3, 6)))
            handle.write(json.dumps({"instruction": question, "response": answer}) + "\n")


def load_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZER)


def baseline(path: Path, tokenizer, system_prompt: str, cache_dir: str) -> tuple[float, float, int]:
    """Seconds for load_dataset, seconds for map, and the examples produced."""
    import datasets

    datasets.disable_progress_bars()
    start = time.perf_counter()
    dataset = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=cache_dir)
    loaded = time.perf_counter()

    def tokenize(batch):
        chats = [[{"role": "system", "content": system_prompt}, {"role": "user", "content": q},
                  {"role": "assistant", "content": a}] for q, a in zip(batch["instruction"], batch["response"])]
        texts = tokenizer.apply_chat_template(chats, tokenize=False)
        return tokenizer(texts, add_special_tokens=False, truncation=True, max_length=MAX_LENGTH)

    mapped = dataset.map(tokenize, batched=True, remove_columns=dataset.column_names, load_from_cache_file=False)
    return loaded - start, time.perf_counter() - loaded, len(mapped)


def lorakit_check(path: Path, tokenizer, system_prompt: str) -> tuple[float, int, int]:
    from lorakit.data.validate import check_files

    start = time.perf_counter()
    report = check_files([path], tokenizer=tokenizer, max_length=MAX_LENGTH, system_prompt=system_prompt)
    return time.perf_counter() - start, report.examples, len(report.issues)


def lorakit_tokenize(path: Path, tokenizer, system_prompt: str) -> tuple[float, float, int]:
    """Seconds to read conversations, seconds to render them (ids + labels), and the examples produced."""
    from lorakit.data.render import render_batch
    from lorakit.data.records import read_conversations

    start = time.perf_counter()
    conversations = list(read_conversations(path))
    read = time.perf_counter()
    produced = 0
    for begin in range(0, len(conversations), 512):
        produced += len(render_batch(conversations[begin:begin + 512], tokenizer, system_prompt, MAX_LENGTH))
    return read - start, time.perf_counter() - read, produced


def _rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def peak_memory_child(path: str) -> None:
    """Run in a fresh process: print the resident memory after setup and its peak while checking `path` (MiB)."""
    import threading

    from lorakit.config import DEFAULT_SYSTEM_PROMPT
    from lorakit.data.validate import check_files

    tokenizer = load_tokenizer()
    setup = _rss_mib()
    peak, done = [setup], threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            peak[0] = max(peak[0], _rss_mib())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    check_files([path], tokenizer=tokenizer, max_length=MAX_LENGTH, system_prompt=DEFAULT_SYSTEM_PROMPT)
    done.set()
    sampler.join()
    print(json.dumps({"setup_mib": setup, "peak_mib": max(peak[0], _rss_mib())}))


def measure_memory(path: Path) -> dict:
    result = subprocess.run([sys.executable, __file__, "--memory-child", str(path)], check=True,
                            capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=2, help="Interleaved repetitions; the best of each is kept.")
    parser.add_argument("--out", type=Path, default=None, help="Also write the table here.")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        peak_memory_child(args.memory_child)
        return

    from lorakit.config import DEFAULT_SYSTEM_PROMPT

    tokenizer = load_tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        full, quarter = Path(tmp) / "full.jsonl", Path(tmp) / "quarter.jsonl"
        generate(full, args.examples)
        generate(quarter, args.examples // 4)
        size_mib = full.stat().st_size / 2**20
        runs = []
        for repeat in range(args.repeats):  # interleaved, best of each: fair on a machine with other load
            runs.append((baseline(full, tokenizer, DEFAULT_SYSTEM_PROMPT, str(Path(tmp) / f"hf-cache-{repeat}")),
                         lorakit_check(full, tokenizer, DEFAULT_SYSTEM_PROMPT),
                         lorakit_tokenize(full, tokenizer, DEFAULT_SYSTEM_PROMPT)))
        load_s, map_s, base_n = min((r[0] for r in runs), key=lambda b: b[0] + b[1])
        check_s, check_n, issues = min(r[1] for r in runs)
        read_s, render_s, tok_n = min((r[2] for r in runs), key=lambda t: t[0] + t[1])
        memory_quarter, memory_full = measure_memory(quarter), measure_memory(full)
    assert base_n == check_n == tok_n == args.examples, (base_n, check_n, tok_n)

    n = args.examples
    base_total = load_s + map_s
    rows = [
        ("baseline: load_dataset(json) + datasets.map tokenize", base_total, "1.00x"),
        ("  of which datasets.map tokenize only", map_s, f"{base_total / map_s:.2f}x"),
        ("lorakit data check (parse, formats, PHI, duplicates, token lengths)", check_s,
         f"{base_total / check_s:.2f}x"),
        ("lorakit tokenize: read + render_batch (ids + assistant labels)", read_s + render_s,
         f"{base_total / (read_s + render_s):.2f}x"),
        ("  of which render_batch only (vs map only)", render_s, f"{map_s / render_s:.2f}x vs map"),
    ]
    lines = [
        f"lorakit bench/data_check.py: {n} examples ({size_mib:.0f} MiB JSONL), tokenizer {TOKENIZER.name}, "
        f"max_length {MAX_LENGTH}, default system prompt",
        f"machine: {os.cpu_count()} CPU cores, python {sys.version.split()[0]}; "
        f"best of {args.repeats} interleaved runs; "
        f"data check issues found: {issues} (clean generated data)",
        "",
        aligned_row(["what", "seconds", "examples/s", "speed vs baseline"], _WIDTHS),
    ]
    lines += [aligned_row([name, f"{seconds:.1f}", f"{n / seconds:.0f}", ratio], _WIDTHS)
              for name, seconds, ratio in rows]
    lines += [
        "",
        "resident memory of `data check` in a fresh process "
        "(MiB; setup = imports + tokenizer, peak sampled every 10 ms):",
        f"  {n // 4:>7} examples: setup {memory_quarter['setup_mib']:.0f}, peak {memory_quarter['peak_mib']:.0f} "
        f"(+{memory_quarter['peak_mib'] - memory_quarter['setup_mib']:.0f})",
        f"  {n:>7} examples: setup {memory_full['setup_mib']:.0f}, peak {memory_full['peak_mib']:.0f} "
        f"(+{memory_full['peak_mib'] - memory_full['setup_mib']:.0f}); file is {size_mib:.0f} MiB",
    ]
    print_report(lines, args.out)


if __name__ == "__main__":
    main()
