"""Issue 23, batched serve against llama.cpp's server: 1 client vs 8 concurrent streamed clients, on the same CPU.

    python bench/serve_vs_llama_cpp.py --run-dir RUN --gguf RUN/export/gguf/NAME-f16.gguf \
        --llama-server PATH/llama-server [--llama-cpp-python VENV/bin/python] [--threads 1] [--out FILE]

The workload of bench/serve_batching.py (its 8 questions, streamed through the official `openai` client, 1 client
asking them one after another, then 8 clients at once; the same tokens/s, TTFT and identical-answer counts) on:
- `lorakit serve RUN --batch-size 8` (continuous batching, float32 on CPU as lorakit runs it there);
- llama.cpp's own server, `llama-server --parallel 8` (8 slots, continuous batching), on the GGUF that
  `lorakit export RUN --format gguf` wrote (f16 weights), with the sampling settings that export recommends:
  `--temp 0 --top-k 0 --min-p 0 --repeat-penalty 1.1 --repeat-last-n 64` and the GGUF's chat template, whose
  default system prompt is the run's (so both servers see the same prompt tokens);
- with --llama-cpp-python: llama-cpp-python's server (`python -m llama_cpp.server`) on the same GGUF. It has no
  parallel slots (its app takes a lock around each request: abetlen/llama-cpp-python#1329, open), so its
  8-client row shows one-at-a-time answering; the same sampling settings go with each request. It runs with
  --interrupt_requests False: by default a new request stops the answer being streamed (7 of 8 concurrent
  clients then get an empty answer; --interrupting shows that).
Every server gets the same number of compute threads (--threads; lorakit's through OMP_NUM_THREADS, llama.cpp's
through -t/-tb); all answer greedily with max_tokens --max-tokens. The last table compares each server's
1-client answers with lorakit's (f16 weights against float32 ones, so a near-tie can flip a token).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from serve_batching import (
    QUESTIONS,
    REPO,
    Server,
    concurrent_clients,
    device_line,
    free_port,
    one_client,
    summary,
    table,
)

SAMPLING = ["--temp", "0", "--top-k", "0", "--min-p", "0", "--repeat-penalty", "1.1", "--repeat-last-n", "64"]
# llama-cpp-python's server takes sampling settings per request only (its defaults differ: top_k 40, min_p 0.05).
PYTHON_OPTIONS = {"temperature": 0.0, "extra_body": {"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.1}}


class Process:
    """A server command on a free loopback port, ready once GET `ready_path` answers 200, until the block ends."""

    def __init__(self, args: list[str], port: int, ready_path: str, env: dict | None = None):
        self.args, self.port, self.ready_path, self.env = args, port, ready_path, env

    def __enter__(self) -> Process:
        self.log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"serve-vs-llama-cpp-{self.port}.log", "w")
        self.process = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT,
                                        env={**os.environ, **(self.env or {})})
        deadline = time.monotonic() + 600
        while True:
            assert self.process.poll() is None, f"{self.args[0]} exited; see {self.log.name}"
            assert time.monotonic() < deadline, f"{self.args[0]} did not start in 600 s"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{self.ready_path}", timeout=5) as reply:
                    if reply.status == 200:
                        return self
            except (TimeoutError, OSError):
                pass
            time.sleep(0.5)

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)
        self.log.close()

    def client(self):
        import openai

        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key="unused", max_retries=0, timeout=1800)


def version(command: list[str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True)
    return " ".join((done.stdout + done.stderr).split())[:200]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--gguf", type=Path, required=True)
    parser.add_argument("--llama-server", type=Path, required=True)
    parser.add_argument("--llama-cpp-python", type=Path, help="The python of a venv with llama-cpp-python[server].")
    parser.add_argument("--interrupting", action="store_true", help="llama-cpp-python's default --interrupt_requests.")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--answers", type=Path)
    args = parser.parse_args()
    threads = str(args.threads)
    os.environ["OMP_NUM_THREADS"] = threads  # lorakit serve's torch threads (the subprocess inherits it)

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    out = [f"# python bench/serve_vs_llama_cpp.py {' '.join(sys.argv[1:])}",
           f"# commit {commit.strip()}, {device_line()}, greedy, max_tokens {args.max_tokens}, {threads} compute "
           f"thread(s) per server, {len(QUESTIONS)} questions, {args.clients} clients",
           f"# llama-server: {version([str(args.llama_server), '--version'])}"]
    if args.llama_cpp_python:
        out.append("# llama-cpp-python: " + version([str(args.llama_cpp_python), "-c",
                                                      "import llama_cpp; print(llama_cpp.__version__)"]))
    print("\n".join(out), flush=True)

    def llama_server() -> Process:
        port = free_port()
        return Process([str(args.llama_server), "-m", str(args.gguf), "--host", "127.0.0.1", "--port", str(port),
                        "--parallel", str(args.clients), "-c", str(1024 * args.clients), "-t", threads, "-tb", threads,
                        "--jinja", "--no-webui", *SAMPLING], port, "/health")

    def llama_cpp_python() -> Process:
        port = free_port()
        return Process([str(args.llama_cpp_python), "-m", "llama_cpp.server", "--model", str(args.gguf), "--host",
                        "127.0.0.1", "--port", str(port), "--n_ctx", "1024", "--n_threads", threads,
                        "--n_threads_batch", threads, "--interrupt_requests", str(args.interrupting)], port,
                       "/v1/models")

    servers = [("lorakit serve --batch-size 8", lambda: Server(args.run_dir, batch_size=args.clients,
                                                                queue_size=args.clients), {}),
               (f"llama-server --parallel {args.clients}", llama_server, {"temperature": 0.0})]
    if args.llama_cpp_python:
        servers.append((f"llama-cpp-python server (no slots{', interrupting' if args.interrupting else ''})",
                        llama_cpp_python, PYTHON_OPTIONS))
    answers, firsts = [], {}
    for index in range(1, args.rounds + 1):
        rows = []
        started, load = time.strftime("%H:%M:%S", time.gmtime()), os.getloadavg()[0]
        for name, start, options in servers:
            with start() as server:
                concurrent_clients(server, 8, args.clients, **options)  # warm-up
                single = one_client(server, args.max_tokens, **options)
                burst = concurrent_clients(server, args.max_tokens, args.clients, **options)
            for row, got in (("1 client", single), (f"{args.clients} clients", burst)):
                rows.append({**summary(f"{name}: {row}", got, single if got is burst else None), "server": name})
                answers += [{"round": index, "server": name, "row": row, "question": q, **a}
                            for q, a in enumerate(got, start=1)]
            firsts.setdefault(name, single)
        block = [f"\n## Round {index}, {started}-{time.strftime('%H:%M:%S', time.gmtime())} UTC, load average "
                 f"{load:.1f} at the start and {os.getloadavg()[0]:.1f} at the end",
                 "\"vs 1 client\": against the first row (lorakit, 1 client); each server's own ratio below.",
                 table(rows), ""]
        for name in dict.fromkeys(r["server"] for r in rows):
            one, many = (r for r in rows if r["server"] == name)
            block.append(f"- {name}: {args.clients} clients {many['tok_s'] / one['tok_s']:.2f}x its own 1 client")
        print("\n".join(block), flush=True)
        out += block
    reference = next(iter(firsts.values()))
    out.append("\n## 1-client answers equal to lorakit serve's (round 1)")
    out += [f"- {name}: {sum(a['text'] == r['text'] for a, r in zip(got, reference))} of {len(reference)}"
            for name, got in firsts.items()]
    out.append("- tokens counted from: " + ", ".join(sorted({f"{a['server']} {a['counted']}" for a in answers})))
    print("\n".join(out[-len(firsts) - 2:]), flush=True)
    if args.out:
        args.out.write_text("\n".join(out) + "\n")
    if args.answers:
        args.answers.write_text("".join(json.dumps(a) + "\n" for a in answers))


if __name__ == "__main__":
    main()
