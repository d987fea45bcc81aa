"""A run whose plan tiles the MLP (issue 23: what the planner picks for 24k-32k tokens on an 8 GB card) resumes
bit-exactly: the tiles' dropout masks come from the run's random stream, which a checkpoint saves, and their
replay in backward leaves that stream where the forward pass left it. CPU plans never tile (the planner tiles
only on CUDA), so the plan is forced here, with LoRA dropout on and every layer checkpointed."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from simulated_crash import CrashAfterStep, SimulatedCrash

from conftest import final_adapter, metric_records, tiny_run_config
from lorakit.model import tiled_mlp
from lorakit.training import session
from lorakit.training.loop import train


@pytest.fixture
def tiled_plan(monkeypatch) -> list[int]:
    """Every run of this test plans the tiled MLP, in chunks of 16 tokens; returns the rows of each tiled call."""
    resolve, calls, apply = session.resolve_auto_settings, [], tiled_mlp.TiledMLP.apply

    def forced(*args, **kwargs):
        return replace(resolve(*args, **kwargs), tiled_mlp=True)

    def counted(x, *rest):
        calls.append(x.shape[:-1].numel())
        return apply(x, *rest)

    monkeypatch.setattr(session, "resolve_auto_settings", forced)
    monkeypatch.setattr(tiled_mlp, "mlp_chunk_tokens", lambda intermediate, dtype_bytes: 16)
    monkeypatch.setattr(tiled_mlp.TiledMLP, "apply", counted)
    return calls


def test_tiled_mlp_run_resumes_bit_identically(tiny_llama_dir, qa_file, tmp_path, tiled_plan):
    def config(run_dir):
        return tiny_run_config(tiny_llama_dir, qa_file, run_dir, max_steps=2, save_steps=1, eval_steps=10,
                               gradient_checkpointing=True, packing=True)

    train(config(tmp_path / "straight"))
    assert tiled_plan and max(tiled_plan) > 16  # the MLPs ran tiled, in more than one chunk
    with pytest.raises(SimulatedCrash):
        train(config(tmp_path / "resumed"), reporter=CrashAfterStep(2))  # the newest checkpoint is step 1
    before_resume = len(tiled_plan)
    train(config(tmp_path / "resumed"), resume=True)
    assert len(tiled_plan) > before_resume  # the resumed step ran tiled too
    straight, resumed = final_adapter(tmp_path / "straight"), final_adapter(tmp_path / "resumed")
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)
    losses = [[r.get("train_loss") for r in metric_records(tmp_path / run)] for run in ("straight", "resumed")]
    assert losses[0] == losses[1] and len(losses[0]) >= 2
