"""One host-device sync per optimizer step (and the next step's batches made during backward) trains exactly as
one sync per micro-batch did, and the loss positions computed on the CPU are the ones the loss finds on its own."""

from __future__ import annotations

import torch

from lorakit.data.packing import collate_packed
from lorakit.data.render import TokenizedExample
from lorakit.model.kernels import LOSS_POSITIONS, causal_lm_loss, loss_positions
from lorakit.training.loop import train
from conftest import assert_trained_identically, tiny_run_config, train_with_disabled


def test_host_overlap_trains_bit_identically(tiny_llama_dir, qa_file, tmp_path, monkeypatch):
    assert_trained_identically(
        train_with_disabled(tiny_llama_dir, qa_file, tmp_path / "one-sync", monkeypatch, ""),
        train_with_disabled(tiny_llama_dir, qa_file, tmp_path / "per-batch", monkeypatch, "host_overlap"))


def test_precomputed_loss_positions_give_the_same_loss(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    examples = [TokenizedExample([5, 6, 7, 8, 9], [-100, -100, 7, 8, 9]), TokenizedExample([4, 3, 2], [-100, 3, 2])]
    batch = collate_packed(examples)
    positions = loss_positions(batch["labels"])
    # Flat row [5 6 7 8 9 | 4 3 2]: position t predicts label t+1; labels 7, 8, 9, 3 and 2 (the row's first label
    # of the second example is ignored by packing, and the last position predicts nothing).
    assert positions.tolist() == [1, 2, 3, 5, 6]
    with torch.no_grad():
        assert torch.equal(causal_lm_loss(model, {**batch, LOSS_POSITIONS: positions}), causal_lm_loss(model, batch))


def test_next_steps_batches_are_collated_before_this_steps_sync(tiny_llama_dir, qa_file, tmp_path, monkeypatch):
    """Every step after the first finds its micro-batches already collated (made while the previous step's
    backward pass ran), and the last step makes none for a step that will not run."""
    from lorakit.training.trainer import TrainerHooks

    ready_at_entry = []

    class Ready(TrainerHooks):
        def step_starting(self, trainer, step, groups):
            ready_at_entry.append([trainer.session.ahead.holds(group) for group in groups])

        def step_finished(self, trainer, step, groups):
            ready_at_entry[-1].append(len(trainer.session.ahead))

    config = tiny_run_config(tiny_llama_dir, qa_file, tmp_path / "run", max_steps=3, gradient_accumulation_steps=2,
                             packing=True, save_steps=10, eval_steps=10)
    train(config, hooks=Ready())
    # [ready for each of the step's micro-batches..., batches made ahead when the step returned]
    assert ready_at_entry == [[False, False, 2], [True, True, 2], [True, True, 0]]
