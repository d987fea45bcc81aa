"""Issue 23, target 3: where a batched decoding step of `lorakit serve` spends its time, split into the model loop,
the streaming work and the HTTP server, at 1, 2, 4 and 8 rows.

    python bench/serve_step_profile.py --random-model phi4-mini --out DIR        # on a GPU machine
    python bench/serve_step_profile.py --random-model tiny --device cpu --out DIR # smoke test
    python bench/serve_step_profile.py --run-dir RUN --out DIR                   # a finished run
    python bench/serve_step_profile.py --random-model phi4-mini --only cudnn --out DIR  # cuDNN's cost, fresh process
    python bench/serve_step_profile.py --random-model tiny --device cpu --only host-bound --busy-ms 40 \
        --repeats 3 --before-src OLD/src --out DIR   # the HTTP side under a GIL-holding generation thread, on CPU

The run is bench/serve_batching.py's (its builder, reused when --work already holds it), loaded once with
lorakit's load_run. Every row does the same work: N requests (bench/serve_batching.py's questions), each
1 + --steps tokens, greedy (random weights never end a turn; the model loop ignores stop ids so every row lives
for all steps). Rows:
- "loop": RunningBatch directly (no queue, no text): join the N prompts, then --steps `step()`s, synchronized
  at the ends; per step also the time inside the model's forward, inside `_choose` and in the rest
  (bookkeeping), each synchronized (the sync itself is charged to the part before it);
- "loop, per-row penalty (before)": greedy choice as before commit 3345fce, one host-to-device copy per row;
- "loop, bare forward": the floor of this model loop: only the forward, the mask column and argmax;
- "loop, penalty 1.0": no repetition penalty (penalize_repeats skipped);
- "loop, eager attention": transformers' eager attention instead of the loaded one (SDPA);
- "loop, merged" / "merged, penalty 1.0" / "merged, bare forward": after peft's merge_and_unload (last, it
  changes the model);
- "queue": GenerationQueue (the worker thread with _Live's TextStreamer and stop-string text), N jobs
  submitted at once, no HTTP; "queue + event loop": its events delivered to an asyncio loop in another thread
  (call_soon_threadsafe, as the server does) where each text piece becomes the server's SSE chunk: the
  generation thread and the loop share the GIL as in `lorakit serve`, without sockets;
- "http": `lorakit serve RUN --batch-size 8` in a subprocess, N streamed `openai` clients at once
  (bench/serve_batching.py's Server and ask), when `openai` is installed and --no-http is not given.
- "host only: ...": the loop and the queue on a stand-in model (HostOnlyModel: a lookup, no layers), so that
  a step costs only lorakit's own host work: per step and per added row (`--host-only` runs only these);
- "--only host-bound": bench/lib/host_bound_rows.py (the GPU's host-bound step on CPU, queue vs http per src);
Then torch.profiler over a few steps at N=1 and N=8 (unmerged, as served): top ops by self CPU and by device
time written to DIR/profile_n{N}_{cpu,cuda}.txt, and per step: kernel launches, memcpy and sync calls, and the
device's busy time against the wall time (a step whose kernels take far less than its wall time is bound by
the host: Python, launches, syncs).
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lib.cudnn_rows import cudnn_rows  # noqa: E402
from lib.decode_step_rows import SIZES, bare_row, host_rows, loop_row, prompts, queue_row, settings, sync  # noqa: E402
from lib.host_bound_rows import host_bound_rows, table  # noqa: E402
from serve_batching import QUESTIONS, Server, ask, device_line, random_run  # noqa: E402


def http_rows(run_dir: Path, steps: int) -> dict[int, dict]:
    """`lorakit serve --batch-size 8` in a subprocess, N streamed clients at once."""
    rows = {}
    with Server(run_dir, batch_size=max(SIZES), queue_size=max(SIZES)) as server:
        apis = [server.client() for _ in range(max(SIZES))]
        ask(apis[0], "Hello?", 4)
        for count in SIZES:
            for tokens in (4, steps + 1):  # the first burst at each size is a warm-up
                results: list[dict | None] = [None] * count
                barrier = threading.Barrier(count)

                def one(index: int, barrier: threading.Barrier, results: list, tokens: int) -> None:
                    barrier.wait()
                    results[index] = ask(apis[index], QUESTIONS[index % len(QUESTIONS)], tokens)

                threads = [threading.Thread(target=one, args=(i, barrier, results, tokens)) for i in range(count)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
            seconds = max(r["end"] for r in results) - min(r["start"] for r in results)
            tokens = sum(r["tokens"] for r in results)
            rows[count] = {"tok_s": tokens / seconds, "tokens": tokens, "step_ms": 1000 * seconds / (steps + 1),
                           "ttft_ms": 1000 * max(r["ttft"] for r in results)}
    return rows


def profile(run, count: int, steps: int, out: Path) -> str:
    """torch.profiler over `steps` steps of `count` rows (after warm-up): tables to files, a summary line back."""
    import torch
    from torch.profiler import ProfilerActivity

    from lorakit.inference.generate import _pad_id
    from lorakit.inference.running_batch import RowRequest, RunningBatch

    cuda = run.device.type == "cuda"
    batch = RunningBatch(run.model, stop_ids=[], pad_id=_pad_id(run), device=run.device)
    batch.join([RowRequest(i, p, settings(run, 10**6)) for i, p in enumerate(prompts(run, count))])
    for _ in range(4):
        batch.step()
    sync(run.device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=activities) as prof:
        started = time.perf_counter()
        for _ in range(steps):
            batch.step()
        sync(run.device)
        wall = time.perf_counter() - started
    events = prof.key_averages()
    (out / f"profile_n{count}_cpu.txt").write_text(events.table(sort_by="self_cpu_time_total", row_limit=25))
    if cuda:
        (out / f"profile_n{count}_cuda.txt").write_text(events.table(sort_by="self_device_time_total", row_limit=25))
        trace = out / f"trace_n{count}.json"
        prof.export_chrome_trace(str(trace))
        trace.with_suffix(".json.gz").write_bytes(gzip.compress(trace.read_bytes()))
        trace.unlink()

    def calls(part: str, prefix: tuple[str, ...] = ("cuda", "cu")) -> float:
        """Calls per step of the events whose name starts with `prefix` and holds `part` (CUDA runtime calls)."""
        return sum(e.count for e in events if e.key.startswith(prefix) and part in e.key) / steps

    kernels = [e for e in events if e.device_type.name == "CUDA"]
    device_us = sum(e.self_device_time_total for e in kernels)
    line = (f"N={count}: wall {1000 * wall / steps:.1f} ms/step (profiled), aten ops {calls('', ('aten::',)):.0f}/step "
            f"(nested ones counted), kernel launches {calls('LaunchKernel'):.0f}/step, "
            f"cudaMemcpy* {calls('Memcpy'):.1f}/step (HtoD on the device {calls('HtoD', ('Memcpy',)):.1f}), "
            f"*Synchronize {calls('Synchronize'):.1f}/step, aten::_local_scalar_dense "
            f"{calls('_local_scalar_dense', ('aten::',)):.1f}/step, aten::to {calls('aten::to', ('aten::',)):.1f}/step, "
            f"aten::lift_fresh (tensors from Python data) {calls('lift_fresh', ('aten::',)):.1f}/step, "
            f"cudaMalloc {calls('Malloc'):.2f}/step, cudaFree {calls('Free'):.2f}/step")
    if cuda:
        line += f", device busy {device_us / 1000 / steps:.1f} ms/step ({100 * device_us / 1e6 / wall:.0f}% of wall)"
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:8]
    line += "\n    top self CPU per step: " + ", ".join(f"{e.key} {e.self_cpu_time_total / 1000 / steps:.2f} ms"
                                                     f" (x{e.count / steps:.0f})" for e in top)
    if cuda:
        top = sorted(kernels, key=lambda e: e.self_device_time_total, reverse=True)[:8]
        line += "\n    top device per step: " + ", ".join(
            f"{e.key[:50]} {e.self_device_time_total / 1000 / steps:.2f} ms (x{e.count / steps:.0f})" for e in top)
    return line


def print_table(rows: list[tuple[str, int, dict]], out_lines: list[str]) -> None:
    base = {name: r["tok_s"] for name, n, r in rows if n == 1}
    lines = ["| row | N | step ms | join ms | tokens/s | vs its N=1 | forward ms | _choose ms | rest ms |",
             "|---|---|---|---|---|---|---|---|---|"]

    def cell(r: dict, key: str) -> str:
        return f"{r[key]:.2f}" if key in r else "-"

    for name, n, r in rows:
        ratio = f"{r['tok_s'] / base[name]:.2f}x" if name in base else "-"
        lines.append(f"| {name} | {n} | {cell(r, 'step_ms')} | {cell(r, 'join_ms')} | {r['tok_s']:.1f} | {ratio} | "
                     f"{cell(r, 'forward_ms')} | {cell(r, 'choose_ms')} | {cell(r, 'rest_ms')} |")
    steps = {(name, n): r["step_ms"] for name, n, r in rows}
    lines += [f"- {name}: {1000 * (steps[name, max(SIZES)] - steps[name, 1]) / (max(SIZES) - 1):.0f} us more per step "
              f"for each row beyond the first" for name in dict.fromkeys(name for name, _, _ in rows)
              if (name, 1) in steps and (name, max(SIZES)) in steps]
    print("\n".join(lines), flush=True)
    out_lines += lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--run-dir", type=Path)
    what.add_argument("--random-model", choices=["phi4-mini", "smollm2-135m", "tiny"])
    parser.add_argument("--work", type=Path, default=Path("/tmp/lorakit-serve-batching"))
    parser.add_argument("--device", choices=["auto", "cpu"], default="auto")
    parser.add_argument("--steps", type=int, default=64, help="Steps of the loop, queue and http rows.")
    parser.add_argument("--variant-steps", type=int, default=24, help="Steps of the other rows (after 4 of warm-up).")
    parser.add_argument("--profile-steps", type=int, default=3)
    parser.add_argument("--no-http", action="store_true")
    parser.add_argument("--host-only", action="store_true", help="Only the host-work rows (HostOnlyModel), quick.")
    parser.add_argument("--only", choices=["cudnn", "host-bound"], help="cudnn: only ms/step with SDPA's cuDNN "
                        "backend allowed vs excluded at new KV lengths, N=1 and N=8 (bench/lib/cudnn_rows.py); run it "
                        "in a fresh process. host-bound: bench/lib/host_bound_rows.py.")
    parser.add_argument("--busy-ms", type=float, default=40.0, help="host-bound: host CPU ms per forward.")
    parser.add_argument("--busy-kind", choices=["python", "torch", "none"], default="python",
                        help="host-bound: a pure-Python burn, or small torch ops (each releases the GIL), on a "
                        "stand-in model; none: the run's own model (on a GPU: the real step).")
    parser.add_argument("--repeats", type=int, default=3, help="host-bound: interleaved repeats.")
    parser.add_argument("--before-src", type=Path, help="host-bound: also serve from this src/ (an older checkout).")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch is imported; the server subprocess inherits it
    import torch

    from lorakit.inference.generate import load_run

    args.out.mkdir(parents=True, exist_ok=True)
    made = time.perf_counter()
    run_dir = args.run_dir
    if run_dir is None:
        run_dir = args.work / f"{args.random_model}-run"
        if not (run_dir / "final").is_dir():
            run_dir = random_run(args.random_model, args.work)
    run = load_run(run_dir)
    attention = run.model.get_base_model().config._attn_implementation
    lines = [f"# python bench/serve_step_profile.py {' '.join(sys.argv[1:])}",
             f"# {device_line()}, {next(run.model.parameters()).dtype}, attention {attention}, run {run_dir} "
             f"(built/loaded in {time.perf_counter() - made:.0f} s), steps {args.steps}, "
             f"repetition_penalty {settings(run, 1).repetition_penalty}"]
    print("\n".join(lines), flush=True)
    rows: list[tuple[str, int, dict]] = []

    def measure(name: str, function) -> None:
        started = time.perf_counter()
        for n in SIZES:
            rows.append((name, n, function(n)))
            print(f"  N={n}: " + ", ".join(f"{k} {v:.1f}" for k, v in rows[-1][2].items()), flush=True)
        print(f"{name}: {time.perf_counter() - started:.0f} s", flush=True)

    if args.only == "cudnn":
        rows += cudnn_rows(run, args.steps)
        print_table(rows, lines)
        (args.out / "table.md").write_text("\n".join(lines) + "\n")
        return
    if args.only == "host-bound":
        srcs = ({"before": args.before_src.resolve()} if args.before_src else {}) | {"after": Path(__file__).
                                                                                      resolve().parents[1] / "src"}
        lines[-1] += f", busy {args.busy_ms} ms per forward ({args.busy_kind})"
        lines += table(host_bound_rows(run, run_dir, srcs, args.busy_ms, args.busy_kind, args.steps, args.repeats,
                                       args.out))
        print("\n".join(lines), flush=True)
        (args.out / "table.md").write_text("\n".join(lines) + "\n")
        return
    rows += host_rows(run, args.steps)
    if args.host_only:
        print_table(rows, lines)
        (args.out / "table.md").write_text("\n".join(lines) + "\n")
        return
    measure("loop", lambda n: loop_row(run, n, args.steps))
    measure("loop, per-row penalty (before)", lambda n: loop_row(run, n, args.variant_steps, per_row_penalty=True))
    measure("loop, bare forward", lambda n: bare_row(run, n, args.variant_steps))
    measure("loop, penalty 1.0", lambda n: loop_row(run, n, args.variant_steps, penalty=1.0, parts=False))
    measure("queue", lambda n: queue_row(run, n, args.steps))
    measure("queue + event loop", lambda n: queue_row(run, n, args.steps, event_loop=True))
    if not args.no_http:
        try:
            import openai  # noqa: F401
        except ImportError:
            print("http rows skipped: openai is not installed", flush=True)
        else:
            started = time.perf_counter()
            rows += [("http", n, r) for n, r in http_rows(run_dir, args.steps).items()]
            print(f"http: {time.perf_counter() - started:.0f} s", flush=True)
    summaries = []
    for n in (1, max(SIZES)):
        try:
            summaries.append(profile(run, n, args.profile_steps, args.out))
        except Exception as exc:  # the timing rows matter more than the profile: keep going
            summaries.append(f"N={n}: profiling failed: {exc!r}")
        print(summaries[-1], flush=True)
    base = run.model.get_base_model()
    if attention != "eager":
        base.set_attn_implementation("eager")
        measure("loop, eager attention", lambda n: loop_row(run, n, args.variant_steps, parts=False))
        base.set_attn_implementation(attention)
    run.model = run.model.merge_and_unload()  # RunningBatch takes the model it is given
    measure("loop, merged", lambda n: loop_row(run, n, args.variant_steps))
    measure("merged, penalty 1.0", lambda n: loop_row(run, n, args.variant_steps, penalty=1.0, parts=False))
    measure("merged, bare forward", lambda n: bare_row(run, n, args.variant_steps))
    print(flush=True)
    print_table(rows, lines)
    lines += ["", "## torch.profiler, unmerged, as served (tables in profile_n*_*.txt)"] + summaries
    print("\n".join(lines[-len(summaries) - 2:]), flush=True)
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    if torch.cuda.is_available():
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB", flush=True)


if __name__ == "__main__":
    main()
