"""The planner plans for the card a capped allocator emulates (a GPU shared with another process, or the
benchmark's 8 GB card on a bigger GPU): cap + the CUDA context, not the physical card."""

from types import SimpleNamespace

import torch

from lorakit.plan.memory import CUDA_CONTEXT_BYTES, GIB
from lorakit.plan.run_plan import device_memory_bytes


def _fake_gpu(monkeypatch, total: int, fraction: float) -> None:
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=total))
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda device: fraction, raising=False)


def test_uncapped_gpu_is_planned_at_its_full_memory(monkeypatch):
    _fake_gpu(monkeypatch, 140 * GIB, 1.0)
    assert device_memory_bytes(cuda=True) == 140 * GIB


def test_capped_allocator_is_planned_as_the_card_it_emulates(monkeypatch):
    total = 140 * GIB
    cap = int(7.3 * GIB)
    _fake_gpu(monkeypatch, total, cap / total)
    assert abs(device_memory_bytes(cuda=True) - (cap + CUDA_CONTEXT_BYTES)) <= 1
