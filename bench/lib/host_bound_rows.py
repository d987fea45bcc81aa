"""bench/serve_step_profile.py --only host-bound: the HTTP side's cost per row per decoding step when the
generation thread is bound by the host and holds the GIL, as on a GPU, reproduced on CPU (issue 23, target 3).

Rows, each at N = 1, 2, 4, 8 streamed clients of 1 + steps tokens:
- "queue": GenerationQueue in this process over the same stand-in model, no HTTP (the step's floor);
- "http, <name>": `lorakit serve`'s app from each given src/ (bench/lib/host_bound_server.py, a subprocess over
  HostBoundModel), N raw-socket clients (asyncio in this process: the lightest client, so that the 2 cores go
  to the server) reading the SSE stream, interleaved: repeat 1 of every src, then repeat 2, ...
Per row: ms per step, aggregate tokens/s, the event loop's and the generation thread's CPU ms per step (their
thread clocks), HTTP body writes per streamed event (chunked transfer: one HTTP chunk per write), time to first
token, and the prefills of the burst (how many joins its N requests took; stand-in models only). Every http
answer's text, finish_reason and usage must be the first src's (checked, else it raises).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from lib.decode_step_rows import SIZES, HostOnlyModel, queue_row
from lib.host_bound_server import HostBoundModel
from serve_batching import QUESTIONS, free_port

BENCH = Path(__file__).resolve().parents[1]


class BoundServer:
    """host_bound_server.py from `src` in a subprocess on a free port, until the `with` block ends."""

    def __init__(self, src: Path, run_dir: Path, busy_ms: float, kind: str):
        self.port = free_port()
        self.args = [sys.executable, str(BENCH / "lib" / "host_bound_server.py"), str(run_dir), str(self.port),
                     str(busy_ms), kind]
        self.env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{BENCH}"}

    def __enter__(self) -> BoundServer:
        self.process = subprocess.Popen(self.args, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 300
        while True:
            assert self.process.poll() is None, f"server exited: {self.process.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "server did not start in 300 s"
            try:
                asyncio.run(self.call("GET", "/health"))
                return self
            except OSError:
                time.sleep(0.3)

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)

    async def call(self, method: str, path: str, body: dict | None = None) -> dict:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        payload = json.dumps(body or {}).encode()
        writer.write(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode() + payload)
        head, _, data = (await reader.read()).partition(b"\r\n\r\n")
        writer.close()
        assert head.startswith(b"HTTP/1.1 200"), head + data
        return json.loads(data)


async def stream_one(port: int, question: str, max_tokens: int) -> dict:
    """One streamed chat request over a raw socket: the SSE events, the HTTP chunks they came in, the times."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    payload = json.dumps({"model": "run", "messages": [{"role": "user", "content": question}],
                          "max_tokens": max_tokens, "stream": True,
                          "stream_options": {"include_usage": True}}).encode()
    started = time.perf_counter()
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head.lower(), head
    body, chunks, first = bytearray(), 0, None
    while True:
        size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            break
        body += (await reader.readexactly(size + 2))[:-2]
        chunks += 1
        if first is None and b'"content": "' in body.replace(b'"content": ""', b""):
            first = time.perf_counter()
    ended = time.perf_counter()
    writer.close()
    events = body.decode().split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]", events[-3:]
    parsed = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    text = "".join(p["choices"][0]["delta"].get("content", "") for p in parsed if p["choices"])
    finish = [p["choices"][0]["finish_reason"] for p in parsed if p["choices"] and p["choices"][0]["finish_reason"]]
    usage = parsed[-1]["usage"]
    return {"answer": (text, tuple(finish), usage["completion_tokens"]), "tokens": usage["completion_tokens"],
            "events": len(events) - 1, "chunks": chunks, "start": started, "end": ended,
            "ttft": (first or ended) - started}


async def burst(server: BoundServer, count: int, tokens: int) -> list[dict]:
    return await asyncio.gather(*(stream_one(server.port, QUESTIONS[i % len(QUESTIONS)], tokens)
                                  for i in range(count)))


def http_row(server: BoundServer, count: int, steps: int, profile_to: Path | None = None) -> tuple[dict, list]:
    asyncio.run(burst(server, count, 4))  # warm-up at this size
    cpu_before = asyncio.run(server.call("GET", "/bench/cpu"))
    if profile_to is not None:
        asyncio.run(server.call("POST", "/bench/profile/start"))
    results = asyncio.run(burst(server, count, steps + 1))
    if profile_to is not None:
        asyncio.run(server.call("POST", f"/bench/profile/stop?path={profile_to}"))
    cpu_after = asyncio.run(server.call("GET", "/bench/cpu"))
    seconds = max(r["end"] for r in results) - min(r["start"] for r in results)
    tokens = sum(r["tokens"] for r in results)
    events = sum(r["events"] for r in results)
    row = {"step_ms": 1000 * seconds / (steps + 1), "tok_s": tokens / seconds,
           "loop_cpu_ms": 1000 * (cpu_after["loop_s"] - cpu_before["loop_s"]) / (steps + 1),
           "generation_cpu_ms": 1000 * (cpu_after["generation_s"] - cpu_before["generation_s"]) / (steps + 1),
           "writes_per_event": sum(r["chunks"] for r in results) / events,
           "loop_cpu_us_per_event": 1e6 * (cpu_after["loop_s"] - cpu_before["loop_s"]) / events,
           "ttft_ms": 1000 * max(r["ttft"] for r in results),
           "prefills": cpu_after["prefills"] - cpu_before["prefills"]}
    return row, [r["answer"] for r in results]


def host_bound_rows(run, run_dir: Path, srcs: dict[str, Path], busy_ms: float, kind: str, steps: int,
                    repeats: int, out: Path) -> list[tuple[str, int, dict]]:
    """The rows above; cProfile tables of the event loop at N=8 of the last repeat go to out/loop_profile_*.txt."""
    import torch

    rows: list[tuple[str, int, dict]] = []
    stub = run
    if kind != "none":  # as host_bound_server.py does: the same stand-in, one torch thread
        stub = replace(run, model=HostBoundModel(HostOnlyModel(run), busy_ms, kind))
        torch.set_num_threads(1)
    answers: dict[int, list] = {}
    for repeat in range(1, repeats + 1):
        for n in SIZES:
            rows.append((f"queue, repeat {repeat}", n, queue_row(stub, n, steps)))
            print(f"  {rows[-1][0]}, N={n}: step {rows[-1][2]['step_ms']:.1f} ms", flush=True)
        for name, src in srcs.items():
            with BoundServer(src, run_dir, busy_ms, kind) as server:
                asyncio.run(burst(server, max(SIZES), 4))
                for n in SIZES:
                    profile = out / f"loop_profile_{name}_n{n}.txt" if repeat == repeats and n == max(SIZES) else None
                    row, got = http_row(server, n, steps)
                    rows.append((f"http, {name}, repeat {repeat}", n, row))
                    assert answers.setdefault(n, got) == got, f"{name}: other answers than the first src's at N={n}"
                    print(f"  {rows[-1][0]}, N={n}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()), flush=True)
                    if profile is not None:  # a separate burst: cProfile slows the loop down
                        http_row(server, n, steps, profile_to=profile.resolve())
    return rows


def table(rows: list[tuple[str, int, dict]]) -> list[str]:
    base = {name: r for name, n, r in rows if n == 1}
    lines = ["| row | N | step ms | tokens/s | vs its N=1 | event loop CPU ms/step | generation CPU ms/step | "
             "loop CPU us/event | body writes/event | TTFT ms | prefills |", "|---|---|---|---|---|---|---|---|---|---|---|"]

    def cell(r: dict, key: str, digits: int = 2) -> str:
        return f"{r[key]:.{digits}f}" if key in r else "-"

    for name, n, r in rows:
        lines.append(f"| {name} | {n} | {r['step_ms']:.1f} | {r['tok_s']:.1f} | {r['tok_s'] / base[name]['tok_s']:.2f}x | "
                     f"{cell(r, 'loop_cpu_ms')} | {cell(r, 'generation_cpu_ms')} | {cell(r, 'loop_cpu_us_per_event', 0)} | "
                     f"{cell(r, 'writes_per_event')} | {cell(r, 'ttft_ms', 0)} | {cell(r, 'prefills', 0)} |")
    steps = {(name, n): r["step_ms"] for name, n, r in rows}
    lines += [f"- {name}: {(steps[name, max(SIZES)] - steps[name, 1]) / (max(SIZES) - 1):.2f} ms more per step for "
              "each row beyond the first" for name in base]
    return lines
