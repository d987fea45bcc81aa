"""bench/profile_step.py charges the GPU's idle gaps to the host operation running at them, on any thread (the
backward pass and its recomputation run on autograd's thread, not the Python one)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import profile_step  # noqa: E402

CPU, CUDA = torch.autograd.DeviceType.CPU, torch.autograd.DeviceType.CUDA


def _event(name, device_type, start, end, thread=1):
    return SimpleNamespace(name=name, device_type=device_type, time_range=SimpleNamespace(start=start, end=end),
                           thread=thread)


def test_gaps_are_charged_to_the_operation_running_on_any_thread():
    events = [
        _event("kernel", CUDA, 0, 100), _event("kernel", CUDA, 200, 300), _event("kernel", CUDA, 350, 400),
        _event("kernel", CUDA, 410, 500),  # a 10 us gap: too short to count
        # the Python thread: many short operations (it has the most events)
        *[_event("aten::view", CPU, t, t + 1, thread=1) for t in range(0, 100, 5)],
        # autograd's thread: the backward node whose recomputation leaves the GPU idle from 100 to 200
        _event("evaluate_function: CheckpointFunctionBackward", CPU, 90, 210, thread=2),
        _event("LoraLinear", CPU, 140, 160, thread=2),
    ]  # 300-350: nothing runs on the host
    lines = "\n".join(profile_step.host_gap_lines(events, steps=1))
    assert "GPU idle between kernels (gaps >= 20 us): 0.1 ms per step in 2 gaps" in lines
    assert "| LoraLinear | 0.10 |" in lines  # innermost at the first gap's middle (150)
    assert "| evaluate_function: CheckpointFunctionBackward | 0.10 |" in lines  # outermost
    assert lines.count("| (no host operation: Python between calls) | 0.05 |") == 2  # the second gap, both tables
