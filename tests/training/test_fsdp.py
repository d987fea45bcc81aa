"""Issue 12, FSDP2: `lorakit train` with training.distributed fsdp under torchrun with 2 CPU processes (gloo;
FSDP2's fully_shard runs on CPU with gloo in torch 2.13) trains the one-process run with the same global batch:
same loss trajectory, final adapter and checkpoint format (within TOLERANCE). A checkpoint of the sharded run
resumes with 1 or 2 processes to the same adapter. model.quantization nf4 with fsdp is refused."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import torch

from conftest import (
    Recorder,
    final_adapter,
    launcher_env,
    max_adapter_diff,
    max_metrics_diff,
    metric_records,
    two_process_torchrun,
    write_config_file,
)
from lorakit.cli.app import run_cli
from lorakit.config import NF4_FSDP_REFUSAL, load_config
from lorakit.run.checkpoints import list_checkpoints
from lorakit.training.loop import train
from lorakit.training.session import SHARED_PACKING_MESSAGE

# Max abs difference allowed between the 1-process and the 2-process fsdp runs. Measured on this config: 1.4e-05
# in the adapter weights, 9.5e-07 in the logged losses. Each step has 3 micro-batches,
# so the processes run 2 and 1 (+1 zero-weighted pass); FSDP2 sums the gradients in another order, and AdamW's
# division by sqrt(v) after 8 steps at learning rate 0.01 magnifies those float32 rounding differences.
TOLERANCE = 1e-4
# AdamW's state, relative to each tensor's largest entry (measured at most 8.5e-6 over the 4 checkpoints).
MOMENT_TOLERANCE = 1e-4
MAX_STEPS = 8
SETTINGS = dict(batch_size=2, gradient_accumulation_steps=3, max_steps=MAX_STEPS, learning_rate=0.01, logging_steps=1,
                eval_steps=4, save_steps=2, save_total_limit=20, lr_scheduler="cosine", warmup_steps=2,
                distributed="fsdp", packing=True)  # packed rows share their prefix (training.shared_prefix) on every rank
RESUMED_FROM = "step-00000004"


def _run_fsdp(config, run, env, *extra: str) -> subprocess.CompletedProcess:
    done = subprocess.run(two_process_torchrun("train", str(config), "--set", f"output_dir={run}", *extra), env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def setup(tiny_llama_dir, tmp_path_factory):
    """The config (dropout on), its one-process run (nothing to shard: trains unsharded) and its 2-process fsdp run."""
    root = tmp_path_factory.mktemp("fsdp")
    config = write_config_file(root, tiny_llama_dir, seed=11, training=SETTINGS,
                               lora={"r": 4, "alpha": 8, "dropout": 0.1})
    baseline, sharded = root / "one-process", root / "two-processes"
    train(load_config(config, [f"output_dir={baseline}"]))
    done = _run_fsdp(config, sharded, launcher_env(root / "cache"))
    return root, config, baseline, sharded, done.stdout + done.stderr


def test_fsdp_two_gloo_processes_equal_one_process(setup):
    _, _, baseline, run, output = setup
    assert "fsdp: frozen weights and LoRA states sharded over 2 processes (FSDP2)" in output
    # Every rank collates the shared layout as one process does (deciding after sharding read fsdp's DTensor LM
    # head as quantized: rows were packed whole, with a wrong warning, other dropout masks and a wrong plan).
    assert SHARED_PACKING_MESSAGE in output and "training.shared_prefix has no effect" not in output
    adapter_diff, metrics_diff = max_adapter_diff(baseline, run), max_metrics_diff(baseline, run, MAX_STEPS)
    print(f"\nfsdp 2 processes vs 1: max abs diff adapter {adapter_diff:.2e}, logged losses {metrics_diff:.2e}")
    assert adapter_diff <= TOLERANCE and metrics_diff <= TOLERANCE
    # The one-process format, written once by rank 0: same files, checkpoints and optimizer state layout.
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in baseline.iterdir())
    assert sorted(p.name for p in (run / "final").iterdir()) == sorted(p.name for p in (baseline / "final").iterdir())
    assert [p.name for p in list_checkpoints(run)] == [p.name for p in list_checkpoints(baseline)]
    for one, two in zip(list_checkpoints(baseline), list_checkpoints(run)):
        assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in two.iterdir())
        first, second = (torch.load(c / "optimizer.pt", weights_only=True) for c in (one, two))
        assert first["param_groups"] == second["param_groups"] and sorted(first["state"]) == sorted(second["state"])
        relative = max(_relative_diff(first["state"][n][k], second["state"][n][k])
                       for n in first["state"] for k in first["state"][n])
        print(f"{one.name}: AdamW state max relative diff {relative:.2e}")
        assert relative <= MOMENT_TOLERANCE
    losses = [r["train_loss"] for r in metric_records(baseline) if "train_loss" in r]
    assert len(losses) == MAX_STEPS and losses[-1] < losses[0]  # LoRA dropout on, shared rows: it still trains
    assert output.count("done: 8 steps") == 1 and output.count("adapter saved to") == 1
    manifest = json.loads((run / "final" / "manifest.json").read_text())
    assert manifest["metrics"]["test_loss"] == pytest.approx(
        json.loads((baseline / "final" / "manifest.json").read_text())["metrics"]["test_loss"], abs=TOLERANCE)


def _relative_diff(first: torch.Tensor, second: torch.Tensor) -> float:
    """Max abs difference over the tensor's own largest magnitude: AdamW's second moments are ~1e-5 here, so an
    absolute tolerance would pass whatever they were."""
    first, second = first.double(), second.double()
    return float((first - second).abs().max() / first.abs().max().clamp_min(1e-30))


def _interrupted_copy(run, target):
    """The sharded run as a crash right after RESUMED_FROM leaves it: later checkpoints and final/ gone."""
    shutil.copytree(run, target)
    for later in [p for p in list_checkpoints(target) if p.name > RESUMED_FROM]:
        shutil.rmtree(later)
    shutil.rmtree(target / "final")
    for name in ("manifest.json", "config.yaml", "loss_curve.png"):
        (target / name).unlink()
    return target


def test_fsdp_checkpoint_resumes_with_1_or_2_processes(setup):
    root, config, baseline, run, _ = setup
    one = _interrupted_copy(run, root / "resumed-1")
    reporter = Recorder()
    train(load_config(config, [f"output_dir={one}"]), resume=True, reporter=reporter)
    assert any(f"resumed from {RESUMED_FROM}" in message for message in reporter.messages), reporter.messages
    two = _interrupted_copy(run, root / "resumed-2")
    done = _run_fsdp(config, two, launcher_env(root / "cache"), "--resume")
    assert f"resumed from {RESUMED_FROM}" in done.stderr
    diffs = {n: (max_adapter_diff(baseline, d), max_metrics_diff(baseline, d, MAX_STEPS))
             for n, d in (("1", one), ("2", two))}
    print(f"\nfsdp checkpoint {RESUMED_FROM} resumed with 1 / 2 processes: max abs diff (adapter, losses) {diffs}")
    assert all(a <= TOLERANCE and m <= TOLERANCE for a, m in diffs.values())
    assert sorted(final_adapter(one)) == sorted(final_adapter(two))


def test_fsdp_resumes_a_data_parallel_checkpoint(setup, tiny_llama_dir):
    """ddp -> fsdp: a checkpoint written by the one-process (ddp) path resumes sharded over 2 processes."""
    root, config, baseline, _, _ = setup
    moved = _interrupted_copy(baseline, root / "ddp-to-fsdp")
    done = _run_fsdp(config, moved, launcher_env(root / "cache"), "--resume")
    assert f"resumed from {RESUMED_FROM}" in done.stderr
    assert max_adapter_diff(baseline, moved) <= TOLERANCE and max_metrics_diff(baseline, moved, MAX_STEPS) <= TOLERANCE


def test_nf4_with_fsdp_is_refused_with_exit_code_2(tmp_path, tiny_llama_dir, capsys):
    """A config refusal, before any process group: the in-process CLI says what `python -m lorakit` would."""
    config = write_config_file(tmp_path, tiny_llama_dir, seed=1, training={"distributed": "fsdp", "max_steps": 2},
                               model={"name": str(tiny_llama_dir), "quantization": "nf4"})
    assert run_cli(["train", str(config)]) == 2
    done = capsys.readouterr()
    output = " ".join((done.out + done.err).split())
    assert f"(top level): {NF4_FSDP_REFUSAL}" in output
    assert NF4_FSDP_REFUSAL == (
        "model.quantization nf4 cannot be combined with training.distributed fsdp: bitsandbytes' 4-bit weights do not "
        "survive FSDP2's sharding (the sharded copy loses their quantization state). Use training.distributed ddp (or "
        "auto), which trains QLoRA on several GPUs, or model.quantization none to shard bf16 weights with fsdp")
