"""The training loop on a tiny CPU model: files written, what trains, accumulation equivalence, learning to stop."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import Recorder, final_adapter, metric_records, tiny_run_config, write_qa_jsonl
from lorakit.data.records import Message
from lorakit.errors import CheckpointError
from lorakit.inference.generate import GenerationSettings, generate_answer, load_run
from lorakit.training.loop import train
from lorakit.training.metrics import SilentReporter
from lorakit.training.session import build_session


def test_run_writes_adapter_checkpoints_manifest_and_curves(tiny_llama_dir, qa_file, tmp_path):
    result = train(tiny_run_config(tiny_llama_dir, qa_file, tmp_path / "run"))
    run = tmp_path / "run"
    assert result.steps == 4
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "config.yaml", "manifest.json"):
        assert (run / "final" / name).is_file(), name
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]
    assert (run / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any((run / "tensorboard").iterdir())
    manifest = json.loads((run / "final" / "manifest.json").read_text())
    assert manifest["split_sizes"] == {"train": 8, "validation": 2, "test": 2}
    assert manifest["seed"] == 7 and len(manifest["data"]["sha256"]) == 64
    assert manifest["versions"]["torch"] == torch.__version__
    assert manifest["metrics"]["test_loss"] == pytest.approx(result.metrics["test_loss"])
    records = metric_records(run)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all("val_loss" in r for r in records if r["step"] % 2 == 0)


def test_lora_weights_change_and_base_weights_do_not(tiny_llama_dir, qa_file, tmp_path):
    before = load_file(tiny_llama_dir / "model.safetensors")
    train(tiny_run_config(tiny_llama_dir, qa_file, tmp_path / "run"))
    adapter = final_adapter(tmp_path / "run")
    assert adapter and all("lora_" in key for key in adapter)
    # peft initialises lora_B to zero: every B matrix must have moved.
    for key, value in adapter.items():
        if "lora_B" in key:
            assert value.abs().sum() > 0, key
    after = load_file(tiny_llama_dir / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_existing_run_dir_is_not_overwritten_silently(tiny_llama_dir, qa_file, tmp_path):
    config = tiny_run_config(tiny_llama_dir, qa_file, tmp_path / "run", max_steps=2)
    train(config)
    with pytest.raises(CheckpointError, match="already holds a training run"):
        train(config)
    assert train(config, overwrite=True).steps == 2


def _one_step_gradients(model_dir, data_file, tmp_path, batch_size, accumulation):
    from lorakit.training.schedule import build_optimizer, build_scheduler
    from lorakit.training.trainer import Trainer, TrainerHooks

    config = tiny_run_config(model_dir, data_file, tmp_path / f"run{batch_size}", batch_size=batch_size,
                             gradient_accumulation_steps=accumulation, max_steps=1)
    config.lora.dropout = 0.0
    torch.manual_seed(0)
    session = build_session(config, SilentReporter())
    params = [p for p in session.model.parameters() if p.requires_grad]
    optimizer = build_optimizer(session.model, config.training)
    scheduler = build_scheduler(optimizer, config.training)
    optimizer.step = lambda: None  # keep the gradients for inspection
    optimizer.zero_grad = lambda set_to_none=True: None
    seen = []

    class Seen(TrainerHooks):
        def step_finished(self, trainer, step, groups):
            seen.extend(i for g in groups for i in g)

    trainer = Trainer(session, tmp_path / f"run{batch_size}", optimizer=optimizer, scheduler=scheduler, scaler=None,
                      hooks=Seen())
    loss, _ = trainer.step()
    return loss, [p.grad.clone() for p in params], sorted(seen)


def test_micro_batch_1_accumulation_4_equals_4_by_1(tiny_llama_dir, tmp_path):
    data = write_qa_jsonl(tmp_path / "qa.jsonl")
    loss_a, grads_a, seen_a = _one_step_gradients(tiny_llama_dir, data, tmp_path, batch_size=1, accumulation=4)
    loss_b, grads_b, seen_b = _one_step_gradients(tiny_llama_dir, data, tmp_path, batch_size=4, accumulation=1)
    assert seen_a == seen_b  # the same four examples
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_overfit_model_learns_to_emit_end_of_turn_and_stop(tiny_llama_dir, tmp_path):
    pair = [("What is BP?", "Blood pressure.")]
    data = write_qa_jsonl(tmp_path / "one.jsonl", pair * 4)
    config = tiny_run_config(tiny_llama_dir, data, tmp_path / "run", batch_size=4, max_steps=60, learning_rate=2e-2,
                             eval_steps=1000, save_steps=1000, logging_steps=20)
    config.data.validation_split = 0.0
    config.data.test_split = 0.0
    config.lora.dropout = 0.0
    config.lora.r = 16
    train(config)
    run = load_run(tmp_path / "run")
    answer, new_ids = generate_answer(run, (Message("user", "What is BP?"),), GenerationSettings(max_new_tokens=12,
                                                                                             repetition_penalty=1.0))
    assert answer == "Blood pressure."
    assert new_ids[-1] == run.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert len(new_ids) < 12  # it stopped by itself


def test_the_objective_is_what_a_step_minimises_and_its_metrics_are_logged(tiny_llama_dir, qa_file, tmp_path):
    """The loss seam a new training method (e.g. a preference loss) plugs into: train(objective=...)."""
    from lorakit.training.objective import NextTokenObjective

    class HalvedLoss(NextTokenObjective):
        def __init__(self):
            self.calls = 0

        def loss(self, session, batch, target_tokens):
            self.calls += 1
            return super().loss(session, batch, target_tokens) * 0.5

        def logged_metrics(self):
            return {"objective_calls": float(self.calls)}

    plain, halved = Recorder(), Recorder()
    train(tiny_run_config(tiny_llama_dir, qa_file, tmp_path / "plain", max_steps=2), reporter=plain)
    train(tiny_run_config(tiny_llama_dir, qa_file, tmp_path / "halved", max_steps=2), reporter=halved,
          objective=HalvedLoss())
    assert halved.losses[0] == plain.losses[0] * 0.5  # the same first batch and weights, half the loss
    records = [r for r in metric_records(tmp_path / "halved") if "train_loss" in r]
    assert [r["objective_calls"] for r in records] == [1.0, 2.0]  # one micro-batch a step, logged every step
    assert all("objective_calls" not in r for r in metric_records(tmp_path / "plain"))
