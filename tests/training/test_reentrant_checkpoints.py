"""Reentrant checkpoints (the checkpointed layers' first forward pass without autograd) train exactly as
non-reentrant ones did: same losses, same adapter, dropout masks replayed in the recomputation either way."""

from __future__ import annotations

import json

import torch

from conftest import final_adapter, tiny_run_config
from lorakit.model import checkpointing
from lorakit.training.loop import train


def _run(model_dir, data_file, output_dir, monkeypatch, disabled: str):
    monkeypatch.setenv("LORAKIT_DISABLE", disabled)
    kinds = []  # the checkpoint implementation of every layer forward the run checkpoints
    from transformers import modeling_utils  # binds torch's checkpoint when checkpointing is switched on

    real_checkpoint = modeling_utils.checkpoint

    def checkpoint(function, *args, use_reentrant=None, **kwargs):
        kinds.append(use_reentrant)
        return real_checkpoint(function, *args, use_reentrant=use_reentrant, **kwargs)

    monkeypatch.setattr(modeling_utils, "checkpoint", checkpoint)
    config = tiny_run_config(model_dir, data_file, output_dir, max_steps=3, gradient_accumulation_steps=2,
                             packing=True, save_steps=10, eval_steps=10, gradient_checkpointing=True)
    train(config)
    losses = [json.loads(line)["train_loss"] for line in (output_dir / "metrics.jsonl").read_text().splitlines()
              if "train_loss" in line]
    return losses, final_adapter(output_dir), set(kinds)


def test_reentrant_checkpoints_train_bit_identically(tiny_llama_dir, qa_file, tmp_path, monkeypatch):
    losses, adapter, kinds = _run(tiny_llama_dir, qa_file, tmp_path / "reentrant", monkeypatch, "")
    assert kinds == {True}
    plain_losses, plain_adapter, plain_kinds = _run(tiny_llama_dir, qa_file, tmp_path / "non-reentrant", monkeypatch,
                                                    "reentrant_checkpoint")
    assert plain_kinds == {False}
    assert len(losses) == len(plain_losses) == 3 and losses == plain_losses
    assert adapter.keys() == plain_adapter.keys()
    assert all(torch.equal(adapter[name], plain_adapter[name]) for name in adapter)


def test_sharded_runs_keep_non_reentrant_checkpoints(monkeypatch):
    monkeypatch.delenv("LORAKIT_DISABLE", raising=False)
    assert checkpointing.reentrant_checkpoints(offload=False) is True
    assert checkpointing.reentrant_checkpoints(offload=False, sharded=True) is False
    monkeypatch.setenv("LORAKIT_DISABLE", "reentrant_checkpoint")
    assert checkpointing.reentrant_checkpoints(offload=False) is False
    assert checkpointing.reentrant_checkpoints(offload=True) is True  # offload works only with reentrant ones


def test_make_trainable_checkpoints_sharded_models_non_reentrantly(tiny_llama_dir, qa_file, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    from lorakit.model.checkpointing import decoder_layers
    from lorakit.model.trainable import make_trainable

    monkeypatch.delenv("LORAKIT_DISABLE", raising=False)
    config = tiny_run_config(tiny_llama_dir, qa_file, tmp_path, gradient_checkpointing=True)
    kinds = {}
    for sharded in (False, True):
        model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
        model = make_trainable(model, config, device=torch.device("cpu"), quantized=False, checkpointed_layers=1,
                               sharded=sharded)
        first = decoder_layers(model)[0]
        assert first.gradient_checkpointing and not decoder_layers(model)[1].gradient_checkpointing
        kinds[sharded] = first._gradient_checkpointing_func.keywords["use_reentrant"]
    assert kinds == {False: True, True: False}
