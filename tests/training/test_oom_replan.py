"""Issue 11: an out-of-memory step re-plans (checkpointing, offload, micro-batch: the planner's fastest that fits
the memory there is) before it halves. On CPU the error is injected from the embedding layer while the first
decoder layer is not checkpointed, and the device's free memory is what the test says it is."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import PHI4_MINI, Recorder, final_adapter, tiny_run_config, train_with
from lorakit.model.checkpointing import decoder_layers
from lorakit.plan import oom
from lorakit.plan.config_view import train_settings
from lorakit.plan.memory import CUDA_CONTEXT_BYTES, GIB, ModelShape, TrainSettings, estimate_peak_memory
from lorakit.plan.oom import MemorySettings, replan_for_memory
from lorakit.training import loop


class NeedsCheckpointing:
    """Raises torch.OutOfMemoryError from a training forward pass while the first decoder layer is not checkpointed:
    a step that fits only with checkpointing on."""

    def __init__(self, model):
        self.model = model

    def out_of_memory(self, module, args) -> bool:
        return module.training and not decoder_layers(self.model)[0].gradient_checkpointing


class MoreThanTwoRows(NeedsCheckpointing):
    """A step that fits only at micro-batch 2 or less, checkpointed or not."""

    def out_of_memory(self, module, args) -> bool:
        return module.training and args[0].shape[0] > 2


@pytest.fixture
def inject_oom(monkeypatch):
    """inject_oom(kind): every training session built from now on runs out of memory where `kind` says; returns
    the list of (session model, number of errors raised) the sessions add to."""
    from lorakit.training.trainer import TrainerHooks

    raised: list[list] = []

    def inject(kind):
        class Inject(TrainerHooks):
            def session_ready(self, session):
                rule, record = kind(session.model), [session.model, 0]
                raised.append(record)

                def hook(module, args):
                    if rule.out_of_memory(module, args):
                        record[1] += 1
                        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)")

                session.model.get_input_embeddings().register_forward_pre_hook(hook)

        train_with(monkeypatch, hooks=Inject())
        return raised

    return inject


def _config(model_dir, data_file, run_dir):
    return tiny_run_config(model_dir, data_file, run_dir, batch_size=4, gradient_accumulation_steps=1, max_steps=4,
                           save_steps=2, eval_steps=2)  # LoRA dropout 0.1: the retry must draw the same masks


def _device_with(monkeypatch, model_dir, config, *, micro_batch: int, checkpointed_layers: int) -> int:
    """Make the device report the memory the planner predicts for these settings at max_length (no more)."""
    shape = ModelShape.from_config(json.loads((model_dir / "config.json").read_text()))
    settings = train_settings(config, "none", dtype_bytes=4, cuda=False)
    settings = TrainSettings(**{**settings.__dict__, "tokens_per_micro_batch": micro_batch * config.model.max_length,
                                "checkpointed_layers": checkpointed_layers})
    memory = estimate_peak_memory(shape, settings).peak_on_gpu()
    monkeypatch.setattr(oom, "training_memory_bytes", lambda device: memory)
    return memory


def test_oom_replan_checkpoints_a_layer_keeps_the_micro_batch_and_the_update(
    tiny_llama_dir, qa_file, tmp_path, monkeypatch, inject_oom
):
    reference = loop.train(_config(tiny_llama_dir, qa_file, tmp_path / "reference"))
    config = _config(tiny_llama_dir, qa_file, tmp_path / "run")
    memory = _device_with(monkeypatch, tiny_llama_dir, config, micro_batch=4, checkpointed_layers=1)
    sessions = inject_oom(NeedsCheckpointing)
    reporter = Recorder()
    result = loop.train(config, reporter=reporter)

    notice = (f"out of memory at step 1 with micro-batch 4 and checkpointing none: re-planned for the {memory / GIB:.1f} "
              "GiB this device has, retrying the step with checkpointing 1 of 2 layers and micro-batch 4 (same "
              "examples per optimizer step)")
    assert [m for m in reporter.messages if m.startswith("out of memory")] == [notice]
    [(model, raised)] = sessions
    assert raised == 1
    assert [layer.gradient_checkpointing for layer in decoder_layers(model)] == [True, False]
    settings = json.loads((result.adapter_dir / "manifest.json").read_text())["settings"]
    assert (settings["micro_batch_size"], settings["gradient_accumulation_steps"]) == (4, 1)  # unchanged
    ours, theirs = final_adapter(result.run_dir), final_adapter(reference.run_dir)
    assert all(torch.equal(ours[key], theirs[key]) for key in theirs)  # the same update, bit for bit


def test_oom_replan_is_saved_and_kept_after_resume(tiny_llama_dir, qa_file, tmp_path, monkeypatch, inject_oom):
    straight = loop.train(_config(tiny_llama_dir, qa_file, tmp_path / "straight"))
    config = _config(tiny_llama_dir, qa_file, tmp_path / "run")
    _device_with(monkeypatch, tiny_llama_dir, config, micro_batch=4, checkpointed_layers=1)
    sessions = inject_oom(NeedsCheckpointing)
    with pytest.raises(KeyboardInterrupt):
        loop.train(config, reporter=Recorder(crash_after_step=3))
    saved = json.loads((tmp_path / "run" / "checkpoints" / "step-00000002" / "trainer_state.json").read_text())
    assert (saved["trainer"]["checkpointed_layers"], saved["trainer"]["offload_activations"]) == (1, False)
    assert saved["trainer"]["micro_batch_size"] is None  # the configured micro-batch stayed
    reporter = Recorder()
    result = loop.train(config, resume=True, reporter=reporter)
    assert [raised for _, raised in sessions] == [1, 0]  # the resumed model was checkpointed from its first step
    assert not [m for m in reporter.messages if m.startswith("out of memory")]
    ours, theirs = final_adapter(result.run_dir), final_adapter(straight.run_dir)
    assert all(torch.equal(ours[key], theirs[key]) for key in theirs)


def test_oom_without_a_plan_that_needs_less_halves_as_before(tiny_llama_dir, qa_file, tmp_path, monkeypatch, inject_oom):
    monkeypatch.setattr(oom, "training_memory_bytes", lambda device: CUDA_CONTEXT_BYTES)  # nothing fits
    inject_oom(MoreThanTwoRows)
    reporter = Recorder()
    result = loop.train(_config(tiny_llama_dir, qa_file, tmp_path / "run"), reporter=reporter)
    assert [m for m in reporter.messages if m.startswith("out of memory")] == [
        "out of memory at step 1 with micro-batch 4: retrying the step with micro-batch 2 and 2 accumulation steps "
        "(same examples per optimizer step)"]
    assert result.steps == 4


def test_replan_on_the_emulated_8_gb_card_checkpoints_instead_of_halving_to_2():
    """The issue's case: micro-batch 64 x 512 tokens without checkpointing on 8,188 MiB. Halving went 64 -> 2;
    the re-plan asks for what the planner itself would run there."""
    shape = ModelShape.from_config(PHI4_MINI)
    base = TrainSettings("nf4", 2, 16, "all-linear", True, tokens_per_micro_batch=512, kv_expanded=False)
    chosen = replan_for_memory(shape, base, MemorySettings(64, 0, False), max_length=512, memory_bytes=8188 * 2**20)
    assert (chosen.micro_batch, chosen.settings.checkpointed_layers, chosen.settings.offload_activations) == (16, 31, False)
    assert replan_for_memory(shape, base, MemorySettings(64, 0, False), max_length=512, memory_bytes=GIB) is None
    # A plan must need less than the one that failed, even when the device reports room for it (a too-low prediction).
    again = replan_for_memory(shape, base, MemorySettings(16, 31, False), max_length=512, memory_bytes=8188 * 2**20)
    assert again.estimate.peak_allocated < chosen.estimate.peak_allocated
