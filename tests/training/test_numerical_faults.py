"""Issue 4, point 5: a NaN or Inf loss or gradient stops the run with the step, the batch's example ids and
advice; the last good checkpoint stays; fp16 trains with a loss scaler."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import metric_records, train_with, write_config_file
from lorakit.cli.app import run_cli
from lorakit.data.render import TokenizedExample
from lorakit.run.checkpoints import latest_good_checkpoint, list_checkpoints, verify_checkpoint
from lorakit.training.numerics import loss_scaler, numerical_fault


def _config(tmp_path, model_dir):
    return write_config_file(tmp_path, model_dir, seed=2, training={
        "batch_size": 2, "max_steps": 6, "learning_rate": 0.01, "logging_steps": 1, "eval_steps": 2, "save_steps": 2})


@pytest.fixture
def poison(monkeypatch):
    """poison(step, kind): corrupt optimizer step `step` with a NaN/Inf loss ('nan', 'inf') or a NaN gradient
    ('nan-grad'); returns the 'file:line' ids of that step's examples once it ran."""
    from lorakit.training.objective import NextTokenObjective
    from lorakit.training.trainer import TrainerHooks

    ids: list[str] = []
    plan = {}

    class PoisonedLoss(NextTokenObjective):
        def loss(self, session, batch, target_tokens):
            loss = super().loss(session, batch, target_tokens)
            if plan["armed"] and plan["kind"] == "zero":  # issue 22: a loss collapsing to exactly 0.0
                return loss * 0.0
            return loss + float(plan["kind"]) if plan["armed"] and plan["kind"] in ("nan", "inf") else loss

    class Poison(TrainerHooks):
        def session_ready(self, session):
            lora = next(p for n, p in session.model.named_parameters() if "lora_B" in n)
            lora.register_hook(lambda grad: grad * float("nan") if plan["armed"] and plan["kind"] == "nan-grad" else grad)

        def step_starting(self, trainer, step, groups):
            plan["armed"] = step == plan["step"]
            if plan["armed"]:
                examples = trainer.session.data.splits.train
                ids.extend(f"{examples[i].source}:{examples[i].line}" for g in groups for i in g)

    train_with(monkeypatch, hooks=Poison(), objective=PoisonedLoss())

    def arm(step: int, kind: str) -> list[str]:
        plan.update(step=step, kind=kind, armed=False)
        return ids

    return arm


@pytest.mark.parametrize(
    ("kind", "what"),
    [("nan", "The loss became nan"), ("inf", "The loss became inf"), ("nan-grad", "The gradient norm became nan"),
     ("zero", "The loss became exactly 0.0 (every gradient is zero)")],
)
def test_numerical_faults_stop_with_step_example_ids_and_advice(tiny_llama_dir, tmp_path, capsys, poison, kind, what):
    ids = poison(3, kind)
    assert run_cli(["train", str(_config(tmp_path, tiny_llama_dir))]) == 3
    err = capsys.readouterr().err
    assert len(ids) == 2 and all(i.endswith(tuple(f":{n}" for n in range(1, 13))) for i in ids)
    assert f"error: {what} at step 3; examples in this batch: {', '.join(ids)}. The last good checkpoint is kept." in err
    assert "hint: Lower training.learning_rate (e.g. by 10x), then resume with --resume." in err
    assert "Traceback" not in err

    run = tmp_path / "run"
    assert [p.name for p in list_checkpoints(run)] == ["step-00000002"]
    assert latest_good_checkpoint(run).name == "step-00000002" and verify_checkpoint(run / "checkpoints" / "step-00000002") is None
    assert not (run / "final").exists()
    logged = metric_records(run)
    assert [r["step"] for r in logged] == [1, 2]
    assert all(math.isfinite(v) for r in logged for v in r.values() if isinstance(v, float))


def test_numerical_faults_fp16_advice_names_bf16():
    examples = [TokenizedExample([1], [1], source="data/qa.jsonl", line=7)]
    fp16 = numerical_fault(examples, torch.float16, 12, [[0]], "The loss became inf")
    assert fp16.message == "The loss became inf at step 12; examples in this batch: data/qa.jsonl:7. The last good checkpoint is kept."
    assert "use training.precision: bf16 instead of fp16" in fp16.hint
    assert "bf16" not in numerical_fault(examples, torch.bfloat16, 12, [[0]], "x").hint
    assert fp16.exit_code == 3


def test_numerical_faults_fp16_uses_a_loss_scaler_and_only_fp16():
    assert isinstance(loss_scaler(torch.float16, torch.device("cuda")), torch.amp.GradScaler)
    assert loss_scaler(torch.bfloat16, torch.device("cuda")) is None
    assert loss_scaler(torch.float32, torch.device("cpu")) is None


def test_numerical_faults_loss_scaler_skips_overflowing_steps_then_stops_when_the_scale_collapses(tiny_llama_dir, qa_file, tmp_path):
    """The fp16 path of the step on CPU: an overflowing gradient skips the update and halves the scale (no error);
    once the scale is below 1 the run stops as a numerical fault."""
    from conftest import tiny_run_config
    from lorakit.errors import TrainingError
    from lorakit.training.metrics import SilentReporter
    from lorakit.training.session import build_session
    from lorakit.training.trainer import Trainer

    config = tiny_run_config(tiny_llama_dir, qa_file, tmp_path / "run")
    session = build_session(config, SilentReporter())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0)
    trainer = Trainer(session, tmp_path / "run", scaler=scaler)
    params = trainer.params
    params[0].register_hook(lambda grad: grad * float("inf"))
    before = [p.detach().clone() for p in params]
    trainer.step()
    assert scaler.get_scale() == 1.0
    assert all(torch.equal(a, p) for a, p in zip(before, params))  # the overflowing step was skipped
    with pytest.raises(TrainingError, match=r"The fp16 loss scale fell to 0.5 \(the gradients overflow even unscaled\) at step 2"):
        trainer.step()
