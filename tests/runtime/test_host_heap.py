"""Issue 9, the README demo under 3 GiB: CPU training allocates its gradient buffers once, before the first
forward pass, and zeroes them in place (same losses and weights as fresh buffers); when training ends the
session is freed and glibc's heap is trimmed, before `mode: both` loads the run again to answer."""

from __future__ import annotations

import weakref

import pytest
import torch

from conftest import Recorder, final_adapter, tiny_run_config
from lorakit.runtime import host_heap
from lorakit.training import loop


def _spy_on_gradient_buffers():
    """Hooks that record, before each optimizer step, the address of every trainable parameter's gradient buffer
    (None: none)."""
    from lorakit.training.trainer import TrainerHooks

    class Spy(TrainerHooks):
        def __init__(self):
            self.seen: list[list[int | None]] = []

        def step_starting(self, trainer, step, groups):
            self.seen.append([p.grad.data_ptr() if p.grad is not None else None for p in trainer.params])

    return Spy()


def test_cpu_training_allocates_gradient_buffers_once_before_the_first_step(tiny_llama_dir, qa_file, tmp_path,
                                                                            monkeypatch):
    spy = _spy_on_gradient_buffers()
    loop.train(tiny_run_config(tiny_llama_dir, qa_file, tmp_path / "run", max_steps=3, eval_steps=3, save_steps=3),
               hooks=spy)
    seen = spy.seen
    assert len(seen) == 3 and None not in seen[0]
    assert seen[0] == seen[1] == seen[2]  # the same buffers, zeroed in place between steps


def test_kept_gradient_buffers_give_the_same_losses_and_weights(tiny_llama_dir, qa_file, tmp_path, monkeypatch):
    def run(name):
        reporter = Recorder()
        result = loop.train(tiny_run_config(tiny_llama_dir, qa_file, tmp_path / name, max_steps=4), reporter=reporter)
        return reporter.losses, final_adapter(result.run_dir)

    kept_losses, kept_weights = run("kept")
    monkeypatch.setattr(host_heap, "keeps_gradients_allocated", lambda device, sharded: False)  # fresh buffers every step
    fresh_losses, fresh_weights = run("fresh")
    assert len(kept_losses) == 4 and kept_losses == fresh_losses
    assert kept_weights.keys() == fresh_weights.keys()
    for key in fresh_weights:
        assert torch.equal(kept_weights[key], fresh_weights[key]), key


def test_training_frees_its_session_and_trims_the_heap_before_returning(tiny_llama_dir, qa_file, tmp_path,
                                                                        monkeypatch):
    from lorakit.training.trainer import TrainerHooks

    models, trims = [], []

    class Watch(TrainerHooks):
        def session_ready(self, session):
            models.append(weakref.ref(session.model))

    def trim(pad: int) -> int:
        trims.append((pad, models[0]() is None))  # is the training model gone when the heap is trimmed?
        return 1

    monkeypatch.setattr(host_heap, "glibc_malloc_trim", lambda: trim)
    loop.train(tiny_run_config(tiny_llama_dir, qa_file, tmp_path / "run", max_steps=2, eval_steps=2, save_steps=2),
               hooks=Watch())
    assert trims == [(0, True)]


@pytest.mark.skipif(host_heap.glibc_malloc_trim() is None, reason="glibc only")
def test_release_freed_memory_returns_a_freed_heap_to_the_system():
    def resident_bytes() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * 4096

    # Many small tensors come from glibc's heap (below its mmap threshold); one kept at the end pins its top,
    # so freeing the others leaves ~200 MB resident until the heap is trimmed.
    held = [torch.ones(16 * 1024) for _ in range(3000)]
    pin = torch.ones(16 * 1024)
    del held
    before = resident_bytes()
    host_heap.release_freed_memory()
    assert before - resident_bytes() > 100 * 2**20
    del pin
