"""`lorakit plan`: the real command on a config.json-only model folder, and its error for a missing GPU size."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import PHI4_MINI
from lorakit.cli.app import run_cli


@pytest.fixture
def plan_config(tmp_path):
    model = tmp_path / "phi4-mini-config-only"  # config.json and nothing else: no weights are needed
    model.mkdir()
    (model / "config.json").write_text(json.dumps(PHI4_MINI))
    config = tmp_path / "run.yaml"
    config.write_text(f"model:\n  name: {model}\n  max_length: 2048\ntraining:\n  batch_size: 1\n"
                      "  gradient_checkpointing: auto\n  packing: true\ndata:\n  train_file: x.jsonl\n")
    return config


def test_plan_for_8gb_prints_the_fitting_settings(plan_config, capsys):
    assert run_cli(["plan", str(plan_config), "--gpu-memory", "8GB"]) == 0
    out = capsys.readouterr().out
    assert "planned for 8.0 GiB" in out
    assert "plan: nf4, micro-batch 1 (2,048 tokens), checkpointing 18 of 32 layers" in out  # fewest that fit
    assert "peak_allocated" in out
    assert "dequantized weights kept: none" in out  # the plan checkpoints layers to fit: no memory to spare


def test_plan_for_a_whole_gpu_keeps_qlora_weights_dequantized(plan_config, capsys):
    assert run_cli(["plan", str(plan_config), "--gpu-memory", "80GB", "--set", "model.quantization=nf4"]) == 0
    out = capsys.readouterr().out
    assert "plan: nf4, micro-batch 1 (2,048 tokens), checkpointing none" in out
    assert "dequantized weights kept: 32 of 32 layers, 6.0 GiB" in out
    assert "dequantized_weights" in out and "6.00" in out  # a row of the predicted peak


def test_plan_that_cannot_fit_exits_with_the_needed_memory(plan_config, capsys):
    assert run_cli(["plan", str(plan_config), "--gpu-memory", "2GB"]) == 2
    assert "needs at least" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the GPU's own memory is the default")
def test_without_gpu_the_memory_size_must_be_given(plan_config, capsys):
    assert run_cli(["plan", str(plan_config)]) == 2
    assert "--gpu-memory 8GB" in capsys.readouterr().err


def test_bad_memory_size_is_a_config_error(plan_config, capsys):
    assert run_cli(["plan", str(plan_config), "--gpu-memory", "lots"]) == 2
    assert "not a memory size" in capsys.readouterr().err


def test_plan_for_two_gpus_is_the_fsdp_plan_train_uses(plan_config, tmp_path, capsys):
    """`lorakit plan --gpus 2` resolves training.distributed and plans per GPU exactly as `lorakit train` does under
    a launcher (plan/run_plan.resolve_auto_settings): bf16 Phi-4-mini on 8 GB cards fits only sharded."""
    from lorakit.config import load_config
    from lorakit.plan.run_plan import resolve_auto_settings

    sets = ["--set", "model.max_length=512", "--set", "model.quantization=none", "--set", "training.batch_size=auto"]
    assert run_cli(["plan", str(plan_config), "--gpu-memory", "8GB", *sets]) == 2  # one card alone: too small
    assert "needs at least" in capsys.readouterr().err
    assert run_cli(["plan", str(plan_config), "--gpu-memory", "8GB", "--gpus", "2", *sets]) == 0
    out = capsys.readouterr().out
    config = load_config(plan_config, [value for value in sets if value != "--set"])
    trained = resolve_auto_settings(config, PHI4_MINI, cuda=True, dtype_bytes=2, nf4_available=True,
                                    memory_bytes=8 * 2**30, world_size=2)
    assert (trained.config.training.distributed, trained.plan.micro_batch) == ("fsdp", 2)
    assert (f"plan: none, micro-batch 2 (1,024 tokens), checkpointing {trained.plan.checkpointing_text}, "
            "fsdp over 2 GPUs") in out
    assert "(after NCCL's buffers)" in out
