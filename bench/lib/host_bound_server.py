"""`lorakit serve`'s app over a stand-in model that is bound by the host, as on a GPU, for bench/lib/host_bound_rows.py.

    PYTHONPATH=SRC:bench python bench/lib/host_bound_server.py RUN_DIR PORT BUSY_MS KIND

Why: on an H100 a decoding step of the Phi-4-mini-shaped run spends ~40 ms of its ~80 ms in Python on the host
(module calls, kernel launches), holding the GIL, while uvicorn's event loop, in another thread of the same
process, needs the GIL for every chunk it streams. On 2 CPU cores the real model's step is compute (the GIL
released inside torch), so that contention never shows. Here every forward first burns BUSY_MS of the
generation thread's own CPU time (thread time: the burn is a fixed amount of work, so time the event loop takes
the GIL away lengthens the step, as on the GPU), then answers from bench/lib/decode_step_rows.py's HostOnlyModel.
KIND "python": a pure-Python loop that gives the GIL up only at the interpreter's switch interval (5 ms);
"torch": small torch ops between a little Python, each op releasing the GIL briefly (the GPU's launch pattern);
"none": the run's own model, unchanged (on a GPU: its real host-bound step; BUSY_MS is ignored).

The app is create_app's, from SRC (an old checkout's src/ for the before row), with two routes for the bench:
GET /bench/cpu (CPU seconds of the event loop's thread and of the generation thread, prefills so far) and
POST /bench/profile/{start,stop} (cProfile of the event loop's thread; stop writes the table to ?path=).
"""

from __future__ import annotations

import cProfile
import io
import pstats
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

from fastapi import Request  # at module level: FastAPI reads the handlers' (string) annotations from here

_WORK_PER_CHECK = 200  # Python loop turns (or torch ops / 10) between two reads of the thread's CPU clock


def burn(seconds: float, kind: str) -> None:
    """Spend `seconds` of this thread's CPU time (time spent waiting for the GIL does not count)."""
    end = time.thread_time() + seconds
    if kind == "python":
        while time.thread_time() < end:
            for _ in range(_WORK_PER_CHECK):
                pass
        return
    import torch

    value = torch.zeros(4)
    while time.thread_time() < end:
        for _ in range(_WORK_PER_CHECK // 10):
            value = value.add(1.0).mul_(0.5)


class HostBoundModel:
    """HostOnlyModel's answers after `busy_ms` of host work per forward (prefill and every decoding step)."""

    def __init__(self, inner, busy_ms: float, kind: str):
        self.inner, self.busy_s, self.kind = inner, busy_ms / 1000, kind
        self.config, self.generation_config = inner.config, inner.generation_config
        self.prefills = 0  # forwards over more than one new token: joins of arriving requests

    def __call__(self, **inputs):
        self.prefills += inputs["input_ids"].shape[1] > 1
        burn(self.busy_s, self.kind)
        return self.inner(**inputs)


def thread_cpu_s(ident: int | None) -> float:
    return time.clock_gettime(time.pthread_getcpuclockid(ident)) if ident is not None else float("nan")


def main() -> None:
    run_dir, port, busy_ms, kind = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    import torch
    import uvicorn

    from lib.decode_step_rows import HostOnlyModel
    from lorakit.config import ServeConfig
    from lorakit.inference.generate import load_run
    from lorakit.inference.serve import create_app

    run = load_run(run_dir)
    if kind != "none":
        torch.set_num_threads(1)  # the stand-in's ops are tiny: no OpenMP threads spinning on the 2 cores
        run = replace(run, model=HostBoundModel(HostOnlyModel(run), busy_ms, kind))
    app = create_app(run, ServeConfig(batch_size=8, queue_size=8, disclaimer=False))
    loop_thread = threading.get_ident()  # uvicorn.run below runs the event loop in this thread
    profiler: list[cProfile.Profile] = []

    async def cpu() -> dict:
        generation = next((t.ident for t in threading.enumerate() if t.name == "lorakit-generation"), None)
        return {"loop_s": thread_cpu_s(loop_thread), "generation_s": thread_cpu_s(generation),
                "prefills": getattr(run.model, "prefills", -1)}  # -1: the run's own model (KIND none)

    async def profile_start() -> dict:
        profiler[:] = [cProfile.Profile(time.thread_time)]  # CPU time: waits for the GIL excluded
        profiler[0].enable()  # this handler runs in the event loop's thread: only that thread is profiled
        return {}

    async def profile_stop(request: Request) -> dict:
        profiler[0].disable()
        text = io.StringIO()
        stats = pstats.Stats(profiler[0], stream=text).sort_stats("tottime")
        stats.print_stats(40)
        stats.sort_stats("cumulative").print_stats(40)
        Path(request.query_params["path"]).write_text(text.getvalue())
        return {}

    app.add_api_route("/bench/cpu", cpu, methods=["GET"])
    app.add_api_route("/bench/profile/start", profile_start, methods=["POST"])
    app.add_api_route("/bench/profile/stop", profile_stop, methods=["POST"])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", timeout_keep_alive=120)


if __name__ == "__main__":
    main()
