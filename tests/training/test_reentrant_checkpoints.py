"""Reentrant checkpoints (the checkpointed layers' first forward pass without autograd) train exactly as
non-reentrant ones did: same losses, same adapter, dropout masks replayed in the recomputation either way."""

from __future__ import annotations

import torch

from conftest import assert_trained_identically, tiny_run_config, train_with_disabled
from lorakit.model import checkpointing


def _checkpoint_kinds(monkeypatch) -> list:
    """The checkpoint implementation (use_reentrant) of every layer forward a run checkpoints."""
    from transformers import modeling_utils  # binds torch's checkpoint when checkpointing is switched on

    kinds, real_checkpoint = [], modeling_utils.checkpoint

    def checkpoint(function, *args, use_reentrant=None, **kwargs):
        kinds.append(use_reentrant)
        return real_checkpoint(function, *args, use_reentrant=use_reentrant, **kwargs)

    monkeypatch.setattr(modeling_utils, "checkpoint", checkpoint)
    return kinds


def test_reentrant_checkpoints_train_bit_identically(tiny_llama_dir, qa_file, tmp_path, monkeypatch):
    kinds = _checkpoint_kinds(monkeypatch)
    reentrant = train_with_disabled(tiny_llama_dir, qa_file, tmp_path / "reentrant", monkeypatch, "",
                                    gradient_checkpointing=True)
    assert kinds and set(kinds) == {True}
    kinds.clear()
    plain = train_with_disabled(tiny_llama_dir, qa_file, tmp_path / "non-reentrant", monkeypatch,
                                "reentrant_checkpoint", gradient_checkpointing=True)
    assert kinds and set(kinds) == {False}
    assert_trained_identically(reentrant, plain)


def test_sharded_runs_keep_non_reentrant_checkpoints(monkeypatch):
    monkeypatch.delenv("LORAKIT_DISABLE", raising=False)
    assert checkpointing.reentrant_checkpoints(offload=False) is True
    assert checkpointing.reentrant_checkpoints(offload=False, sharded=True) is False
    monkeypatch.setenv("LORAKIT_DISABLE", "reentrant_checkpoint")
    assert checkpointing.reentrant_checkpoints(offload=False) is False
    assert checkpointing.reentrant_checkpoints(offload=True) is True  # offload works only with reentrant ones
    assert checkpointing.reentrant_checkpoints(offload=True, sharded=True) is True


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


def test_make_trainable_runs_varlen_attention_for_packed_rows_and_shared_prefix_pairs(tiny_llama_dir, qa_file,
                                                                                       tmp_path):
    """lorakit_varlen for packed SFT rows and for shared-prefix preference pairs (without it the session falls back to
    padded pairs with only a warning: training/session.takes_shared_prefixes); padded pairs keep the model's own."""
    from transformers import AutoModelForCausalLM

    from lorakit.model.attention import uses_varlen_attention
    from lorakit.model.trainable import make_trainable

    runs = (({"packing": True}, True), ({"method": "dpo"}, True), ({"method": "dpo", "shared_prefix": False}, False))
    for training, varlen in runs:
        config = tiny_run_config(tiny_llama_dir, qa_file, tmp_path, **training)
        model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
        model = make_trainable(model, config, device=torch.device("cpu"), quantized=False, checkpointed_layers=0)
        assert uses_varlen_attention(model) is varlen, training
