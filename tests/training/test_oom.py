"""Issue 4, point 4: a CUDA out-of-memory error in a step halves the micro-batch (doubling accumulation, same
examples per optimizer step), logs it and continues; at micro-batch 1 it stops with advice and a resumable
checkpoint. On CPU the error is injected from the embedding layer, where a real one would strike first."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import torch
import yaml

from conftest import Recorder, final_adapter, spy_on_steps, tiny_run_config, train_with, write_qa_jsonl
from lorakit.cli.app import run_cli
from lorakit.data.render import TokenizedExample
from lorakit.errors import TrainingError
from lorakit.plan.micro_batches import accumulation_after_split, halved, split_into_micro_batches
from lorakit.run.checkpoints import verify_checkpoint
from lorakit.training import loop
from lorakit.training.dataset import example_length


class OomInjector:
    """Raises torch.OutOfMemoryError from the embedding layer when a forward pass is too big to 'fit'."""

    def __init__(self, max_rows: int | None = None, max_tokens: int | None = None):
        self.max_rows, self.max_tokens = max_rows, max_tokens
        self.raised = 0
        self.rows_seen: list[int] = []

    def __call__(self, module, args):
        input_ids = args[0]
        rows, tokens = input_ids.shape[0], input_ids.numel()
        if (self.max_rows is not None and rows > self.max_rows) or (self.max_tokens is not None and tokens > self.max_tokens):
            self.raised += 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)")
        self.rows_seen.append(rows)


@pytest.fixture
def inject_oom(monkeypatch):
    """inject_oom(injector): every training session built from now on runs its forward passes through it."""
    from lorakit.training.trainer import TrainerHooks

    injectors = []

    class Inject(TrainerHooks):
        def session_ready(self, session):
            for injector in injectors:
                session.model.get_input_embeddings().register_forward_pre_hook(injector)

    train_with(monkeypatch, hooks=Inject())
    return injectors.append


def _config(model_dir, data_file, run_dir, **training):
    settings = dict(batch_size=4, gradient_accumulation_steps=1, max_steps=4, save_steps=2, eval_steps=2)
    settings.update(training)
    config = tiny_run_config(model_dir, data_file, run_dir, **settings)
    config.lora.dropout = 0.0  # so that micro-batch 2 x 2 and 4 x 1 agree up to float summation order
    return config


def test_oom_halves_the_micro_batch_keeps_the_examples_per_step_and_continues(
    tiny_llama_dir, qa_file, tmp_path, monkeypatch, inject_oom, caplog
):
    steps = spy_on_steps(monkeypatch)
    reference = loop.train(_config(tiny_llama_dir, qa_file, tmp_path / "reference"))
    reference_steps = [sorted(i for g in step for i in g) for step in steps]
    steps.clear()

    injector = OomInjector(max_rows=2)
    inject_oom(injector)
    reporter = Recorder()
    with caplog.at_level(logging.WARNING, logger="lorakit"):
        result = loop.train(_config(tiny_llama_dir, qa_file, tmp_path / "run"), reporter=reporter)

    notice = ("out of memory at step 1 with micro-batch 4: retrying the step with micro-batch 2 and 2 accumulation "
              "steps (same examples per optimizer step)")
    assert [m for m in reporter.messages if m.startswith("out of memory")] == [notice]  # once, then it sticks
    assert "out of memory" not in caplog.text  # the reporter's message is the one place it is said
    assert injector.raised == 1 and max(injector.rows_seen) == 2
    assert result.steps == 4
    assert [sorted(i for g in step for i in g) for step in steps] == reference_steps  # effective batch unchanged
    assert all(len(g) <= 2 for step in steps for g in step)
    settings = json.loads((result.adapter_dir / "manifest.json").read_text())["settings"]
    assert (settings["micro_batch_size"], settings["gradient_accumulation_steps"]) == (2, 2)
    ours, theirs = final_adapter(result.run_dir), final_adapter(reference.run_dir)
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-4, atol=1e-6)


def test_oom_reduced_micro_batch_is_saved_and_kept_after_resume(tiny_llama_dir, qa_file, tmp_path, inject_oom):
    inject_oom(OomInjector(max_rows=2))
    config = _config(tiny_llama_dir, qa_file, tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        loop.train(config, reporter=Recorder(crash_after_step=3))
    saved = json.loads((tmp_path / "run" / "checkpoints" / "step-00000002" / "trainer_state.json").read_text())
    assert (saved["trainer"]["micro_batch_size"], saved["trainer"]["gradient_accumulation_steps"]) == (2, 2)
    reporter = Recorder()
    result = loop.train(config, resume=True, reporter=reporter)
    assert not [m for m in reporter.messages if m.startswith("out of memory")]  # no new failure: 2 was kept
    assert json.loads((result.adapter_dir / "manifest.json").read_text())["settings"]["micro_batch_size"] == 2


def _cli_config(tmp_path, model_dir):
    data = write_qa_jsonl(tmp_path / "qa.jsonl")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "seed": 4, "output_dir": str(tmp_path / "run"), "model": {"name": str(model_dir), "max_length": 128},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.1},
        "training": {"batch_size": 2, "max_steps": 5, "learning_rate": 0.01, "logging_steps": 1, "eval_steps": 5,
                     "save_steps": 2},
        "data": {"train_file": str(data), "system_prompt": "Be careful."},
    }))
    return path


def test_oom_at_micro_batch_1_stops_with_advice_and_a_resumable_checkpoint(
    tiny_llama_dir, tmp_path, inject_oom, monkeypatch, capsys
):
    class OomFromStep3(OomInjector):
        """Everything fits until step 3; from then on nothing does."""

        def __call__(self, module, args):
            if module.training and len(finished) >= 2:
                self.max_rows = 0
            return super().__call__(module, args)

    finished = spy_on_steps(monkeypatch)  # one entry per completed optimizer step
    injector = OomFromStep3()
    inject_oom(injector)
    config = _cli_config(tmp_path, tiny_llama_dir)
    assert run_cli(["train", str(config)]) == 3
    err = capsys.readouterr().err
    assert "out of memory at step 3 with micro-batch 2: retrying the step with micro-batch 1" in err
    checkpoint = tmp_path / "run" / "checkpoints" / "step-00000002"
    assert f"error: Out of memory at step 3 even with micro-batch 1. Saved a resumable checkpoint at {checkpoint}." in err
    longest = re.search(r"The step's longest example is (\S+):(\d+) \((\d+) tokens\)\.", " ".join(err.split()))
    assert longest is not None and longest[1] == str(tmp_path / "qa.jsonl"), err  # issue 22: which example
    assert 20 < int(longest[3]) <= 128
    for advice in ("training.gradient_checkpointing", "QLoRA (model.quantization: nf4)", "shorter model.max_length",
                   "--resume"):
        assert advice in err
    assert "Traceback" not in err
    assert verify_checkpoint(checkpoint) is None
    state = json.loads((checkpoint / "trainer_state.json").read_text())["trainer"]
    assert state["step"] == 2 and state["micro_batch_size"] is None
    assert not (tmp_path / "run" / "final").exists()

    # After the user's fix, --resume redoes step 3 on the same examples with the same randomness: the result is
    # bit-identical to a run that never ran out of memory.
    monkeypatch.undo()
    assert run_cli(["train", str(config), "--resume"]) == 0
    straight = tmp_path / "straight"
    straight.mkdir()
    assert run_cli(["train", str(_cli_config(straight, tiny_llama_dir))]) == 0
    a, b = final_adapter(tmp_path / "run"), final_adapter(straight / "run")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_oom_in_the_optimizer_update_is_not_retried(tiny_llama_dir, qa_file, tmp_path, monkeypatch):
    def step(self, closure=None):
        raise torch.OutOfMemoryError("CUDA out of memory (injected in the update)")

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    with pytest.raises(TrainingError, match="Out of memory in the optimizer update at step 1. The last checkpoint is kept."):
        loop.train(_config(tiny_llama_dir, qa_file, tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_oom_halving_and_accumulation_arithmetic():
    assert [halved(n) for n in (8, 5, 4, 3, 2)] == [4, 3, 2, 2, 1]
    with pytest.raises(AssertionError):
        halved(1)
    assert accumulation_after_split(2, 8, 2) == 8 and accumulation_after_split(1, 3, 2) == 2


def test_oom_split_keeps_every_example_padded_and_packed():
    groups = [[7, 3, 5, 1, 0], [2, 6, 4]]
    pieces = split_into_micro_batches(groups, 2, 5, examples=[], packed=False, max_length=16)
    assert pieces == [[7, 3], [5, 1], [0], [2, 6], [4]]

    lengths = [10, 16, 3, 7, 9, 12, 5, 16]
    examples = [TokenizedExample([1] * n, [1] * n) for n in lengths]
    packed = split_into_micro_batches([[0, 1, 2, 3, 4, 5, 6, 7]], 1, 4, examples=examples, packed=True, max_length=16)
    assert sorted(i for piece in packed for i in piece) == list(range(8))
    assert all(sum(lengths[i] for i in piece) <= 16 for piece in packed)


def test_oom_halving_also_applies_to_the_test_loss_at_the_end(tiny_llama_dir, qa_file, tmp_path, inject_oom):
    """Issue 9, point 4: the final test loss ran at the configured micro-batch (4), which had just run out of
    memory, so a run that recovered by halving crashed at its very end."""
    injector = OomInjector(max_rows=2)
    inject_oom(injector)
    config = _config(tiny_llama_dir, qa_file, tmp_path / "run")
    config.data.validation_split, config.data.test_split = 0.2, 0.4  # 5 test examples: more than 2 rows per pass
    result = loop.train(config)
    assert injector.raised == 1  # the first training step only; validation and test ran at micro-batch 2
    assert max(injector.rows_seen) == 2
    metrics = json.loads((result.adapter_dir / "manifest.json").read_text())["metrics"]
    assert json.loads((result.adapter_dir / "manifest.json").read_text())["split_sizes"]["test"] == 5
    assert metrics["test_loss"] is not None and metrics["test_loss"] > 0


def test_oom_retry_is_said_exactly_once_on_the_command_line(tiny_llama_dir, tmp_path, inject_oom, capsys):
    """Issue 9, point 7: every retry was printed twice (a log WARNING and the progress message)."""
    inject_oom(OomInjector(max_rows=1))
    config = yaml.safe_load(_cli_config(tmp_path, tiny_llama_dir).read_text())
    config["training"]["max_steps"] = 2
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    assert run_cli(["train", str(tmp_path / "config.yaml")]) == 0
    captured = capsys.readouterr()
    output = captured.out + captured.err
    notice = ("out of memory at step 1 with micro-batch 2: retrying the step with micro-batch 1 and 2 accumulation "
              "steps (same examples per optimizer step)")
    assert output.count(notice) == 1, output
    assert output.count("out of memory") == 1


def test_oom_at_the_first_step_after_a_resume_stops_at_micro_batch_1_then_halves_like_any_step(
    tiny_llama_dir, qa_file, tmp_path, monkeypatch, inject_oom
):
    """Issue 22, row 5: the out-of-memory error strikes the first step a resumed run takes (step 3, after
    checkpoint step 2). With nothing fitting: a resumable checkpoint (the same step 2) and the step's longest
    example; resumed again where micro-batch 2 fits: halved as anywhere else, on the uninterrupted run's examples."""
    from lorakit.training.trainer import TrainerHooks

    steps: list[list[tuple[str, int, int]]] = []  # per completed step: (file name, line, tokens) of its examples

    class Examples(TrainerHooks):
        def step_finished(self, trainer, step, groups):
            train = trainer.session.data.splits.train
            steps.append([(Path(train[i].source).name, train[i].line, example_length(train[i]))
                          for group in groups for i in group])

    train_with(monkeypatch, hooks=Examples())
    injector = OomInjector()  # fits everything until a limit is set below
    inject_oom(injector)
    reference = loop.train(_config(tiny_llama_dir, qa_file, tmp_path / "reference"))
    reference_steps, steps[:] = [sorted(s) for s in steps], []

    config = _config(tiny_llama_dir, qa_file, tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        loop.train(config, reporter=Recorder(crash_after_step=3))  # the checkpoint is step 2
    checkpoint = tmp_path / "run" / "checkpoints" / "step-00000002"
    injector.max_rows = 0  # nothing fits
    reporter = Recorder()
    with pytest.raises(TrainingError) as failure:
        loop.train(config, resume=True, reporter=reporter)
    assert "resumed from step-00000002 (step 2)" in reporter.messages
    assert [m for m in reporter.messages if m.startswith("out of memory")] == [
        "out of memory at step 3 with micro-batch 4: retrying the step with micro-batch 2 and 2 accumulation steps "
        "(same examples per optimizer step)",
        "out of memory at step 3 with micro-batch 2: retrying the step with micro-batch 1 and 4 accumulation steps "
        "(same examples per optimizer step)"]
    file, line, tokens = max(reference_steps[2], key=lambda example: example[2])  # step 3's longest example
    longest = [e for e in reference_steps[2] if e[2] == tokens]
    assert failure.value.message in {
        f"Out of memory at step 3 even with micro-batch 1. Saved a resumable checkpoint at {checkpoint}. The step's "
        f"longest example is {qa_file.parent / f}:{n} ({t} tokens)." for f, n, t in longest}
    assert verify_checkpoint(checkpoint) is None
    state = json.loads((checkpoint / "trainer_state.json").read_text())["trainer"]
    assert (state["step"], state["micro_batch_size"]) == (2, None)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-00000002"]

    assert [sorted(s) for s in steps] == reference_steps[:3]  # the killed run's steps; none after the resume
    injector.max_rows, steps[:] = 2, []  # micro-batch 2 fits
    reporter = Recorder()
    result = loop.train(config, resume=True, reporter=reporter)
    assert [m for m in reporter.messages if m.startswith("out of memory")] == [
        "out of memory at step 3 with micro-batch 4: retrying the step with micro-batch 2 and 2 accumulation steps "
        "(same examples per optimizer step)"]
    assert result.steps == 4 and [sorted(s) for s in steps] == reference_steps[2:]  # steps 3 and 4, same examples
    settings = json.loads((result.adapter_dir / "manifest.json").read_text())["settings"]
    assert (settings["micro_batch_size"], settings["gradient_accumulation_steps"]) == (2, 2)
    ours, theirs = final_adapter(result.run_dir), final_adapter(reference.run_dir)
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-4, atol=1e-6)
