"""Running a benchmark row on the GPU: NVLink multicast kept off, nvidia-smi's peak per GPU sampled while a
row runs, a `torchrun` row launched and logged, and the bf16 matmul rate that MFU divides by."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

# Keep NVLink multicast off (a shared host's GPUs can be put out of service by it).
SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def matmul_tflops() -> float:
    """bf16 8192^3 matmul rate (median of 20 after warm-up), the MFU denominator."""
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    times = []
    for index in range(25):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        if index >= 5:
            times.append(start.elapsed_time(end) / 1e3)
    times.sort()
    return 2 * 8192**3 / times[len(times) // 2] / 1e12


class GpuMemorySampler:
    """Highest nvidia-smi memory.used (MiB) per GPU index while running; empty without nvidia-smi."""

    def __init__(self):
        self.peak: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=index,memory.used", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=10).stdout
            except (OSError, subprocess.TimeoutExpired):
                return
            for line in out.strip().splitlines():
                index, used = (int(x) for x in line.split(","))
                self.peak[index] = max(self.peak.get(index, 0), used)
            time.sleep(0.25)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def launch_row(root: Path, name: str, gpus: int, entry: list[str], lorakit_args: list[str], log,
               timeout: int | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    """`torchrun --nproc-per-node GPUS ENTRY LORAKIT_ARGS` on the first GPUS GPUs, logged; returns the finished
    process and the row's common fields (wall time, nvidia-smi peak per GPU). A timeout is exit code 124."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(gpus),
               *entry, *lorakit_args]
    env = dict(os.environ, **SAFE_ENV, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1",
               LORAKIT_CACHE_DIR=str(root / "cache"))
    if torch.cuda.is_available():
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(gpus))
    started = time.perf_counter()
    with GpuMemorySampler() as sampler:
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            stdout, stderr = process.communicate(timeout=timeout)
            done = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
        except subprocess.TimeoutExpired:
            # SIGTERM: torchrun stops its workers (they run in sessions of their own, so no signal to torchrun's
            # process group reaches them); they would otherwise hold the GPUs into the next row.
            process.terminate()
            stdout, stderr = process.communicate()
            done = subprocess.CompletedProcess(command, 124, stdout, stderr + "\nerror: timed out")
    log.write(f"== {name}: {' '.join(command)}\n{done.stdout}\n{done.stderr[-6000:]}\n")
    log.flush()
    return done, {"row": name, "gpus": gpus, "wall_seconds": time.perf_counter() - started,
                  "peak_mib_per_gpu": [sampler.peak.get(i) for i in range(gpus)]}
