"""`lorakit serve` against plain transformers `generate`, on CPU, with the embedded SmolLM2-135M-Instruct.

    python bench/serve.py [--max-tokens 48] [--out bench/results/serve.txt] [--run-dir RUN]

The run directory is made with the public CLI, in a temporary folder: `lorakit train examples/config.yaml`
for one LoRA step (batch 2, max_length 256, no evaluation) -- a quickly trained adapter over the embedded
model, which is all that serving needs (`--run-dir` reuses a finished run instead). Then, in this one process
run, alternating the two sides:

- transformers: the run loaded by `lorakit.inference.generate.load_run` (base + adapter), prompt rendered by
  `render_prompt_ids` with the run's system prompt, then a plain `model.generate` (greedy, the run's
  repetition penalty); time to first token from a transformers streamer.
- serve: `lorakit serve RUN --port P` in a subprocess, driven by the official `openai` client with
  `stream=True`: time to first token = until the first content delta; tokens from `usage`.

1 client: one question. 4 clients: four questions sent at once; the transformers side answers them one after
another (the server also generates one at a time), and its time to first token counts from when all four were
asked. Greedy decoding, so both sides generate the same tokens; the table shows the counts.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from statistics import mean

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = [
    "What are the warning signs of a stroke?",
    "What does insulin do in the body?",
    "Why are antibiotics not used for viral infections?",
    "What is the difference between type 1 and type 2 diabetes?",
]


def lorakit(*args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lorakit", *args], cwd=REPO, **popen)


def train_quick_run(work: Path) -> Path:
    overrides = {"output_dir": str(work / "run"), "mode": "train", "model.max_length": 256,
                 "training.max_steps": 1, "training.batch_size": 2, "training.warmup_steps": 0,
                 "training.eval_steps": 1, "training.save_steps": 1, "training.logging_steps": 1,
                 "eval.after_training": False}
    sets = [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]
    done = lorakit("--quiet", "train", "examples/config.yaml", *sets, "--overwrite")
    assert done.wait(timeout=900) == 0, "lorakit train failed"
    return work / "run"


class _FirstToken:
    """A transformers streamer (put/end) noting when the first new token arrives (the first put is the prompt)."""

    def __init__(self):
        self.puts = 0
        self.first_at: float | None = None

    def put(self, value) -> None:
        self.puts += 1
        if self.puts == 2:
            self.first_at = time.perf_counter()

    def end(self) -> None:
        pass


def transformers_side(run, questions: list[str], max_tokens: int) -> list[dict]:
    """Plain generate, one question after another; times count from the start of the batch."""
    import torch

    from lorakit.data.conversation import Message
    from lorakit.data.render import render_prompt_ids

    started = time.perf_counter()
    results = []
    for question in questions:
        ids = torch.tensor([render_prompt_ids((Message("user", question),), run.tokenizer, run.system_prompt)])
        streamer = _FirstToken()
        with torch.no_grad():
            out = run.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                     do_sample=False, temperature=None, top_p=None, top_k=None,
                                     repetition_penalty=run.config.inference.repetition_penalty,
                                     pad_token_id=run.tokenizer.pad_token_id, streamer=streamer)
        results.append({"ttft": streamer.first_at - started, "end": time.perf_counter() - started,
                        "tokens": out.shape[1] - ids.shape[1]})
    return results


def serve_side(base_url: str, questions: list[str], max_tokens: int) -> list[dict]:
    """One streaming openai client per question, all sent at once."""
    import openai

    clients = [openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600) for _ in questions]
    results: list[dict] = [{} for _ in questions]
    ready = threading.Barrier(len(questions) + 1)
    started = [0.0]

    def ask(index: int) -> None:
        ready.wait()
        stream = clients[index].chat.completions.create(
            model="run", messages=[{"role": "user", "content": questions[index]}], stream=True, temperature=0.0,
            max_tokens=max_tokens, stream_options={"include_usage": True})
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content and "ttft" not in results[index]:
                results[index]["ttft"] = time.perf_counter() - started[0]
            if chunk.usage is not None:
                results[index]["tokens"] = chunk.usage.completion_tokens
        results[index]["end"] = time.perf_counter() - started[0]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(questions))]
    for thread in threads:
        thread.start()
    started[0] = time.perf_counter()
    ready.wait()
    for thread in threads:
        thread.join(900)
    return results


def row(side: str, results: list[dict], baseline: list[dict] | None) -> str:
    ttft = mean(r["ttft"] for r in results)
    tokens = sum(r["tokens"] for r in results)
    rate = tokens / max(r["end"] for r in results)
    if baseline is None:
        ratios = "1.00x | 1.00x"
    else:
        base_rate = sum(r["tokens"] for r in baseline) / max(r["end"] for r in baseline)
        ratios = f"{ttft / mean(r['ttft'] for r in baseline):.2f}x | {rate / base_rate:.2f}x"
    return (f"| {side} | {len(results)} | {ttft:.3f} | {max(r['ttft'] for r in results):.3f} | {tokens} | "
            f"{rate:.1f} | {ratios} |")


def wait_until_serving(base_url: str, server: subprocess.Popen, timeout_s: float = 180) -> None:
    import openai

    api = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)
    deadline = time.monotonic() + timeout_s
    while True:
        assert server.poll() is None, "lorakit serve exited"
        try:
            api.models.list()
            return
        except openai.APIConnectionError:
            assert time.monotonic() < deadline, "lorakit serve did not come up"
            time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "serve.txt")
    parser.add_argument("--run-dir", type=Path, help="A finished run to serve instead of training one.")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `finally` stops the server subprocess
    made = time.perf_counter()
    run_dir = args.run_dir or train_quick_run(Path(tempfile.mkdtemp(prefix="lorakit-serve-bench-")))
    trained_s = time.perf_counter() - made
    how = f"given run dir {run_dir}" if args.run_dir else f"run dir trained in {trained_s:.0f} s by `lorakit train`"

    from lorakit.inference.generate import load_run

    run = load_run(run_dir)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base_url = f"http://127.0.0.1:{port}/v1"
    server = lorakit("--quiet", "serve", str(run_dir), "--port", str(port), stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
    try:
        wait_until_serving(base_url, server)
        transformers_side(run, QUESTIONS[:1], 4)  # warm-up, both sides
        serve_side(base_url, QUESTIONS[:1], 4)
        lines = []
        for clients in (1, 4):
            baseline = transformers_side(run, QUESTIONS[:clients], args.max_tokens)
            served = serve_side(base_url, QUESTIONS[:clients], args.max_tokens)
            lines += [row("transformers generate", baseline, None), row("lorakit serve", served, baseline)]
    finally:
        server.terminate()
        server.wait(30)
    header = [
        f"lorakit serve vs plain transformers generate: embedded smollm2-135m-instruct + a 1-step LoRA adapter, CPU "
        f"({os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end: the machine is shared), "
        f"greedy, max_tokens {args.max_tokens}; {how}.",
        "TTFT = time to first token from when the clients asked; tok/s = all tokens / time until the last answer "
        "ended; ratios = serve / transformers in the same run (TTFT lower is better, tok/s higher is better).",
        "",
        "| side | clients | TTFT mean (s) | TTFT max (s) | tokens | tok/s | TTFT ratio | tok/s ratio |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    text = "\n".join(header + lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
