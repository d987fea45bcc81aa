"""Issue 23, batched serve: 8 concurrent streamed clients against one, on the same `lorakit serve`, in one run.

    python bench/serve_batching.py --run-dir RUN [--clients 8] [--max-tokens 64] [--rounds 2] [--out FILE]

RUN is a finished run (the README demo: `lorakit train examples/config.yaml`, the embedded SmolLM2-135M-Instruct
with its LoRA adapter); copy it first, serve only reads it. Three servers in turn (`lorakit serve RUN` in a
subprocess, driven by the official `openai` client with stream=True and stream_options.include_usage):
- "1 client": the 8 questions asked one after another by one client, on a server with --batch-size 8;
- "8 clients": the same 8 questions sent at once by 8 clients, same server;
- "8 clients, --batch-size 1": the same burst on a server that answers one at a time;
- with --before-src SRC (src/ of a checkout from before batching): the same burst on that code's server, which
  generated with `model.generate`, one request at a time, the others waiting in its queue.
Each round runs the three rows back to back, so that the ratio compares rows measured minutes apart on the
same shared machine; --rounds repeats the whole. Tokens: completion tokens from `usage`. Aggregate tokens/s:
all tokens / (last answer's end - first request's start). Time to first token (TTFT): from sending a request
to its first content chunk. Greedy decoding (the run's settings), so every row must give identical answers;
the "identical" column counts the answers equal to the 1-client row's.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from serve import QUESTIONS as SERVE_QUESTIONS  # bench/serve.py's four questions, then four of other lengths

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = [
    *SERVE_QUESTIONS,
    "How does high blood pressure damage the kidneys over many years?",
    "What is anemia?",
    "When should a persistent cough in an older adult be checked by a doctor, and what tests might be done?",
    "What do platelets do?",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`lorakit serve RUN` in a subprocess on a free loopback port, until the `with` block ends."""

    def __init__(self, run_dir: Path, batch_size: int | None, queue_size: int, src: Path = REPO / "src"):
        self.port = free_port()
        self.src = src
        self.args = [sys.executable, "-m", "lorakit", "--quiet", "serve", str(run_dir), "--port", str(self.port),
                     "--queue-size", str(queue_size), "--no-disclaimer"]
        if batch_size is not None:  # None: code from before --batch-size existed
            self.args += ["--batch-size", str(batch_size)]

    def __enter__(self) -> Server:
        env = {**os.environ, "PYTHONPATH": f"{self.src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        self.process = subprocess.Popen(self.args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 600
        while True:
            assert self.process.poll() is None, f"lorakit serve exited: {self.process.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "lorakit serve did not start in 600 s"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.5)

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)

    def client(self):
        import openai

        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key="unused", max_retries=0, timeout=1800)


def ask(api, question: str, max_tokens: int) -> dict:
    """One streamed answer: its text, completion tokens, start, time to first token and end (perf_counter)."""
    started = time.perf_counter()
    first, pieces, tokens = None, [], 0
    stream = api.chat.completions.create(model="run", messages=[{"role": "user", "content": question}],
                                         max_tokens=max_tokens, stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return {"text": "".join(pieces), "tokens": tokens, "start": started, "ttft": (first or time.perf_counter()) - started,
            "end": time.perf_counter()}


def one_client(server: Server, max_tokens: int) -> list[dict]:
    api = server.client()
    ask(api, "Hello?", 4)  # warm-up: the first forward pass pays one-off costs
    return [ask(api, question, max_tokens) for question in QUESTIONS]


def concurrent_clients(server: Server, max_tokens: int, clients: int) -> list[dict]:
    apis = [server.client() for _ in range(clients)]
    ask(apis[0], "Hello?", 4)
    results: list[dict | None] = [None] * clients
    start = threading.Barrier(clients)

    def run(index: int) -> None:
        start.wait()
        results[index] = ask(apis[index], QUESTIONS[index % len(QUESTIONS)], max_tokens)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered) + 0.5) - 1))]  # nearest rank


def summary(name: str, answers: list[dict], reference: list[dict] | None) -> dict:
    seconds = max(a["end"] for a in answers) - min(a["start"] for a in answers)
    tokens = sum(a["tokens"] for a in answers)
    same = sum(a["text"] == r["text"] for a, r in zip(answers, reference or answers))
    ttfts = [a["ttft"] for a in answers]
    return {"row": name, "requests": len(answers), "tokens": tokens, "seconds": seconds, "tok_s": tokens / seconds,
            "ttft_p50": sorted(ttfts)[len(ttfts) // 2], "ttft_p95": p95(ttfts), "identical": f"{same} of {len(answers)}"}


def table(rows: list[dict]) -> str:
    base = rows[0]["tok_s"]
    lines = ["| row | requests | tokens | seconds | tokens/s | vs 1 client | TTFT p50 s | TTFT p95 s | identical to 1 client |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['row']} | {r['requests']} | {r['tokens']} | {r['seconds']:.1f} | {r['tok_s']:.1f} | "
                     f"{r['tok_s'] / base:.2f}x | {r['ttft_p50']:.2f} | {r['ttft_p95']:.2f} | {r['identical']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--skip-batch-1", action="store_true", help="Leave out the --batch-size 1 row.")
    parser.add_argument("--before-src", type=Path, help="A src/ folder of lorakit before batching, for one more row.")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    import torch

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    out = [f"# python bench/serve_batching.py {' '.join(sys.argv[1:])}",
           f"# commit {commit.strip()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
           f"torch {torch.__version__} ({torch.get_num_threads()} threads per process, OMP_NUM_THREADS="
           f"{os.environ.get('OMP_NUM_THREADS', 'unset')}), greedy, max_tokens {args.max_tokens}, run {args.run_dir}"]
    print("\n".join(out), flush=True)
    for round_index in range(1, args.rounds + 1):
        started = time.strftime("%H:%M:%S", time.gmtime())
        load_before = os.getloadavg()[0]
        with Server(args.run_dir, batch_size=args.clients, queue_size=args.clients) as server:
            single = one_client(server, args.max_tokens)
            burst = concurrent_clients(server, args.max_tokens, args.clients)
        rows = [summary("1 client", single, None),
                summary(f"{args.clients} clients (--batch-size {args.clients})", burst, single)]
        if not args.skip_batch_1:
            with Server(args.run_dir, batch_size=1, queue_size=args.clients) as server:
                rows.append(summary(f"{args.clients} clients (--batch-size 1)",
                                    concurrent_clients(server, args.max_tokens, args.clients), single))
        if args.before_src:
            with Server(args.run_dir, batch_size=None, queue_size=args.clients, src=args.before_src) as server:
                rows.append(summary(f"{args.clients} clients, serve before batching",
                                    concurrent_clients(server, args.max_tokens, args.clients), single))
        block = [f"\n## Round {round_index}, {started}-{time.strftime('%H:%M:%S', time.gmtime())} UTC, load average "
                 f"{load_before:.1f} at the start and {os.getloadavg()[0]:.1f} at the end", table(rows)]
        print("\n".join(block), flush=True)
        out += block
    if args.out:
        args.out.write_text("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
