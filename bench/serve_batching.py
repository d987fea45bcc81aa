"""Issue 23, batched serve: 8 concurrent streamed clients against one, on the same `lorakit serve`, in one run.

    python bench/serve_batching.py --run-dir RUN [--clients 8] [--max-tokens 64] [--rounds 2] [--out FILE]
    python bench/serve_batching.py --random-model phi4-mini --work DIR ...   # on a GPU machine (see below)

RUN is a finished run (the README demo: `lorakit train examples/config.yaml`, the embedded SmolLM2-135M-Instruct
with its LoRA adapter); copy it first, serve only reads it. --random-model builds one instead, for a machine
that cannot install the embedded model's package (the GPU machine): a Phi-4-mini-shaped or SmolLM2-135M-shaped
model with random weights and one `lorakit train` step's LoRA (random weights never say end-of-turn, so every
answer runs to max_tokens). Servers in turn (`lorakit serve RUN` in a subprocess, driven by the official
`openai` client with stream=True and stream_options.include_usage), each warmed up by a short burst of all
clients first (the first steps at each batch size pay one-off costs), then --rounds rounds of:
- "1 client": the 8 questions asked one after another by one client, on a server with --batch-size 8;
- "8 clients": the same 8 questions sent at once by 8 clients, same server, right after;
- "8 clients, --batch-size 1" (a second server): the same burst on a server that answers one at a time;
- with --before-src SRC (src/ of a checkout from before batching): the same burst on that code's server, which
  generated with `model.generate`, one request at a time, the others waiting in its queue.
The ratio compares the 1-client and 8-client rows of one round, measured back to back. Tokens: completion
tokens from `usage`. Aggregate tokens/s: all tokens / (last answer's end - first request's start). Time to
first token (TTFT): from sending a request to its first content chunk. Greedy decoding (the run's settings),
so every row should give the 1-client row's answers: the "identical" column counts them, and a line under the
table says where each other answer first differs (on a GPU, bf16 rounds a batch of 8 differently from a batch
of 1, which can flip a near-tie between two tokens; random weights are full of near-ties).
"""

from __future__ import annotations

import argparse
import json
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


def ask(api, question: str, max_tokens: int, **options) -> dict:
    """One streamed answer: its text, completion tokens, start, time to first token and end (perf_counter).
    `options` go to the request as they are (another server's sampling settings). Tokens: the usage chunk's
    completion_tokens, or the number of content chunks from a server that sends no usage (one token each)."""
    started = time.perf_counter()
    first, pieces, tokens = None, [], None
    stream = api.chat.completions.create(model="run", messages=[{"role": "user", "content": question}],
                                         max_tokens=max_tokens, stream=True, stream_options={"include_usage": True},
                                         **options)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return {"text": "".join(pieces), "tokens": len(pieces) if tokens is None else tokens, "start": started,
            "ttft": (first or time.perf_counter()) - started, "end": time.perf_counter(),
            "counted": "chunks" if tokens is None else "usage"}


def one_client(server, max_tokens: int, **options) -> list[dict]:
    api = server.client()
    ask(api, "Hello?", 4, **options)  # warm-up: the first forward pass pays one-off costs
    return [ask(api, question, max_tokens, **options) for question in QUESTIONS]


def concurrent_clients(server, max_tokens: int, clients: int, **options) -> list[dict]:
    apis = [server.client() for _ in range(clients)]
    ask(apis[0], "Hello?", 4, **options)
    results: list[dict | None] = [None] * clients
    start = threading.Barrier(clients)

    def run(index: int) -> None:
        start.wait()
        results[index] = ask(apis[index], QUESTIONS[index % len(QUESTIONS)], max_tokens, **options)

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


def random_run(kind: str, work: Path) -> Path:
    """A finished run of a random-weight model (the GPU machine cannot install the embedded model's package):
    its architecture built here, then one `lorakit train` step on the bundled data (bench/smollm2_shaped_run.py)."""
    import smollm2_shaped_run
    from lib.phi4_mini_run import PHI4_MINI, SMOKE, build_model

    model = work / f"{kind}-model"
    if kind == "smollm2-135m":
        smollm2_shaped_run.build_model(model)
    else:  # Phi-4-mini's layers with the vocabulary of the one tokenizer in the repository (tests/fixtures)
        build_model(model, dict(PHI4_MINI if kind == "phi4-mini" else SMOKE, vocab_size=49152))
    return smollm2_shaped_run.train_one_step(model, work / f"{kind}-run")


def device_line() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)}), torch {torch.__version__}, {os.cpu_count()} CPUs"
    return (f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs), torch {torch.__version__} "
            f"({torch.get_num_threads()} threads per process, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})")


def differences(answers: list[dict], reference: list[dict]) -> list[str]:
    """Where each answer that differs from the 1-client one first differs (characters in common, of how many)."""
    lines = []
    for index, (answer, ref) in enumerate(zip(answers, reference)):
        if answer["text"] != ref["text"]:
            common = next((i for i, (a, b) in enumerate(zip(answer["text"], ref["text"])) if a != b),
                          min(len(answer["text"]), len(ref["text"])))
            lines.append(f"question {index + 1}: first {common} of {len(ref['text'])} characters equal")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--run-dir", type=Path, help="A finished run (e.g. a copy of the README demo's).")
    what.add_argument("--random-model", choices=["phi4-mini", "smollm2-135m", "tiny"],
                      help="Build a random-weight run of this shape under --work first (tiny: 2 layers, for smoke tests).")
    parser.add_argument("--work", type=Path, default=Path("/tmp/lorakit-serve-batching"))
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--skip-batch-1", action="store_true", help="Leave out the --batch-size 1 row.")
    parser.add_argument("--before-src", type=Path, help="A src/ folder of lorakit before batching, for one more row.")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--answers", type=Path, help="Write every answer (JSON lines) here.")
    args = parser.parse_args()
    made = time.perf_counter()
    run_dir = args.run_dir or random_run(args.random_model, args.work)
    made = time.perf_counter() - made

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    out = [f"# python bench/serve_batching.py {' '.join(sys.argv[1:])}",
           f"# commit {commit.strip()}, {device_line()}, greedy, max_tokens {args.max_tokens}, run {run_dir}"
           + (f" (built in {made:.0f} s)" if args.random_model else "")]
    print("\n".join(out), flush=True)
    rounds: list[list[dict]] = [[] for _ in range(args.rounds)]
    answers: list[dict] = []
    spans: list[list[str]] = [[] for _ in range(args.rounds)]

    def measure(name: str, batch_size: int | None, src: Path, burst_only: bool) -> None:
        with Server(run_dir, batch_size=batch_size, queue_size=args.clients, src=src) as server:
            concurrent_clients(server, 8, args.clients)  # warm-up: every batch size's first steps pay one-off costs
            for index in range(args.rounds):
                spans[index].append(time.strftime("%H:%M:%S", time.gmtime()))
                if not burst_only:
                    single = one_client(server, args.max_tokens)
                    rounds[index].append(summary("1 client", single, None))
                    answers.extend({"round": index + 1, "row": "1 client", "question": q, **a}
                                   for q, a in enumerate(single, start=1))
                reference = [a for a in answers if a["round"] == index + 1 and a["row"] == "1 client"]
                burst = concurrent_clients(server, args.max_tokens, args.clients)
                rounds[index].append({**summary(name, burst, reference), "differences": differences(burst, reference)})
                answers.extend({"round": index + 1, "row": name, "question": q, **a} for q, a in enumerate(burst, start=1))
                spans[index].append(time.strftime("%H:%M:%S", time.gmtime()))

    load_before = os.getloadavg()[0]
    measure(f"{args.clients} clients (--batch-size {args.clients})", args.clients, REPO / "src", burst_only=False)
    if not args.skip_batch_1:
        measure(f"{args.clients} clients (--batch-size 1)", 1, REPO / "src", burst_only=True)
    if args.before_src:
        measure(f"{args.clients} clients, serve before batching", None, args.before_src, burst_only=True)
    for index, rows in enumerate(rounds, start=1):
        block = [f"\n## Round {index}, {spans[index - 1][0]}-{spans[index - 1][-1]} UTC (rows after the first in "
                 f"later servers), load average {load_before:.1f} at the start and {os.getloadavg()[0]:.1f} at the end",
                 table(rows)]
        block += [f"- {r['row']}, {line}" for r in rows for line in r.get("differences", [])]
        print("\n".join(block), flush=True)
        out += block
    if args.out:
        args.out.write_text("\n".join(out) + "\n")
    if args.answers:
        args.answers.write_text("".join(json.dumps(a) + "\n" for a in answers))


if __name__ == "__main__":
    main()
