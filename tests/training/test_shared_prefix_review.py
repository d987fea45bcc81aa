"""What a review of shared-prefix packing found (session 10): a packed SFT resume that switches training.shared_prefix
is refused as a preference resume is (the layouts agree only up to float order, so the resume would not be
bit-exact); an out-of-memory re-plan counts the rows the session really computes (padded where the model could not
take the shared layout), not the ones the config asked for."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from lorakit.config import RunConfig
from lorakit.data.preference_batch import PairLayout
from lorakit.errors import CheckpointError
from lorakit.training.preference_setup import prepare_for_method
from lorakit.training.resume_drift import check_same_run


def _config(method: str = "sft", packing: bool = True, shared_prefix: bool = True) -> RunConfig:
    return RunConfig.model_validate({
        "model": {"max_length": 512}, "data": {"train_file": "x.jsonl"},
        "training": {"method": method, "packing": packing, "shared_prefix": shared_prefix},
    })


def _identity(config: RunConfig) -> dict:
    """The run-identity entries build_session records for the method (an SFT run without init_adapter touches no
    model here), for a model that takes the shared layout wherever the config asks for it."""
    return prepare_for_method(None, config, [], shares_prefixes=config.training.shares_prefixes)


def test_a_packed_sft_resume_refuses_a_switched_layout():
    saved, now = _identity(_config(shared_prefix=True)), _identity(_config(shared_prefix=False))
    with pytest.raises(CheckpointError, match=r"training.shared_prefix changed since the checkpoint .*checkpoint "
                                              r"has True, now False"):
        check_same_run(saved, now)
    check_same_run({}, now)  # a packed checkpoint from before the key was recorded still resumes
    # unpacked SFT rows are never shared: nothing recorded, so those runs resume as before
    assert _identity(_config(packing=False)) == _identity(_config(packing=False, shared_prefix=False)) == {}


def test_an_out_of_memory_replan_counts_padded_pairs_when_the_model_fell_back():
    """A DPO session whose model could not take lorakit_varlen trains on padded pairs (2 x the longest row per
    pair); the re-plan must count those, not the shared layout's |P| + |C| + |R| positions."""
    from lorakit.plan.oom import computed_config

    config = _config("dpo", packing=False)
    fell_back = SimpleNamespace(config=config, shared_prefix=False)
    shared = SimpleNamespace(config=config, shared_prefix=True)
    assert computed_config(shared) is config
    assert computed_config(fell_back).training.shared_prefix is False
    assert computed_config(fell_back).training.model_dump(exclude={"shared_prefix"}) == config.training.model_dump(
        exclude={"shared_prefix"})
    from lorakit.plan.config_view import planned_length

    pairs = PairLayout(positions=(300, 200), keys=(450, 300))
    assert planned_length(computed_config(shared), 400, pairs) == 300
    assert planned_length(computed_config(fell_back), 400, pairs) == 800


def test_neftune_runs_keep_their_rows_whole(caplog):
    """NEFTune scales its noise by 1 / sqrt(the row's length x hidden) (transformers' neftune_post_forward_hook), and
    the shared layout changes the row's length (a DPO micro-batch of 4 pairs: one flat row about 6x the padded
    width, so ~2.4x less noise), so the shared layout would not train as the rows it stands for: no sharing with
    NEFTune, in the plan and the session alike, and one WARNING."""
    from lorakit.training.session import takes_shared_prefixes

    for method, packing in (("sft", True), ("dpo", False)):
        config = _config(method, packing).model_copy(deep=True)
        config.training.neftune_noise_alpha = 5.0
        assert config.training.shared_prefix and not config.training.shares_prefixes
        with caplog.at_level("WARNING"):
            caplog.clear()
            assert takes_shared_prefixes(config, model=None) is False
        assert "training.neftune_noise_alpha" in caplog.text and "training.shared_prefix has no effect" in caplog.text
    assert _config("dpo", packing=False).training.shares_prefixes


def test_a_head_the_fused_loss_cannot_run_gives_the_padded_losses_and_gradients_too(tiny_llama_dir, tokenizer,
                                                                                     monkeypatch):
    """Preference tuning takes the shared layout with any head (only SFT needs a fusable one): a quantized head or
    one that scales its logits (Gemma, Cohere) scores the flat row's full logits (model/kernels.flat_row_outputs)."""
    import torch

    from conftest import lora_model_with_nonzero_b
    from lorakit.data.conversation import Message
    from lorakit.data.preference import PreferencePair
    from lorakit.data.preference_batch import collate_preferences, collate_preferences_shared, render_preferences
    from lorakit.model import kernels
    from lorakit.model.attention import use_varlen_attention
    from lorakit.training import preference_loss as losses

    calls = []
    monkeypatch.setattr(kernels, "lm_head_is_fusable", lambda base: calls.append(base) and False)
    monkeypatch.setattr(losses, "lm_head_is_fusable", lambda base: False)
    torch.manual_seed(0)
    model = lora_model_with_nonzero_b(tiny_llama_dir, dropout=0.0)
    use_varlen_attention(model)
    pairs = [PreferencePair((Message("user", "What do kidneys do?"),), "They filter waste from the blood.",
                            "They filter air."),
             PreferencePair((Message("user", "What is insulin?"),), "A hormone", "A hormone you take whenever.")]
    examples = render_preferences(pairs, tokenizer, "Be careful.", 128)
    results = []
    for batch in (collate_preferences(examples, tokenizer.pad_token_id), collate_preferences_shared(examples)):
        model.zero_grad(set_to_none=True)
        loss = losses.preference_loss(model, batch, "orpo", beta=0.5)
        loss.loss.backward()
        results.append((float(loss.loss), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    assert calls  # the shared row went through the logits path
    (padded, padded_grads), (shared, shared_grads) = results
    assert abs(padded - shared) < 1e-5
    # fp32 noise relative to the gradients' size (up to ~7 here): a wrong layout differs by O(the gradient)
    scale = max(1.0, max(float(g.abs().max()) for g in padded_grads.values()))
    assert max(float((padded_grads[n] - shared_grads[n]).abs().max()) for n in padded_grads) < 1e-5 * scale


def test_after_an_out_of_memory_split_the_bound_covers_the_pieces_the_run_computes():
    """After an out-of-memory error a packed run cuts each bin of its micro-batch into smaller ones
    (plan/micro_batches.split_into_micro_batches), not the bins a fresh run of the smaller micro-batch would
    pack; the re-plan's positions must bound those pieces (before: 256 computed where 254 were planned)."""
    import random

    from lorakit.data.packing import pack_best_fit
    from lorakit.data.render import TokenizedExample
    from lorakit.data.shared_packing import collate_packed_shared, prefix_sharing
    from lorakit.plan.micro_batches import split_into_micro_batches

    generator = random.Random(20)  # a seed where the pieces differ from a fresh packing at the smaller capacity
    lengths = tuple(generator.randint(20, 120) for _ in range(60))
    anchors = tuple(min(length, generator.choice([0, 5, 60, 100])) for length in lengths)
    # examples that share exactly their anchor prefix with the first (and the anchor's shorter prefixes with each other)
    anchor = [1] * max(lengths)
    examples = [TokenizedExample(anchor[:a] + [2 + i] * (length - a), [0] * length)
                for i, (length, a) in enumerate(zip(lengths, anchors))]
    examples[0] = TokenizedExample(anchor[:lengths[0]], [0] * lengths[0])
    sharing = prefix_sharing(examples)
    bins = pack_best_fit(lengths, 4 * 128)
    pieces = split_into_micro_batches(bins, 2, 4, examples=examples, packed=True, max_length=128)
    computed = max(collate_packed_shared([examples[i] for i in piece])["input_ids"].shape[1] for piece in pieces)
    assert computed == 256 > sharing.bin_positions(2 * 128)  # a fresh packing at 256 tokens: 254 at most
    assert computed <= sharing.bin_positions(2 * 128, packed_as=4 * 128)
    assert sharing.bin_positions(4 * 128, packed_as=4 * 128) == sharing.bin_positions(4 * 128)


def test_tiled_mlp_and_non_reentrant_checkpoints_see_the_flat_rows_tokens(tiny_llama_dir, tokenizer):
    """The tiled MLP cuts the flat row into chunks along the sequence (7 tokens here, across segment boundaries) and
    lorakit's non-reentrant checkpoint recomputes a layer with the gather index: the packed rows' loss and LoRA
    gradients still (within 1e-5)."""
    import torch

    from conftest import lora_model_with_nonzero_b
    from lorakit.data.conversation import Conversation, Message
    from lorakit.data.packing import collate_packed
    from lorakit.data.render import render_batch
    from lorakit.data.shared_packing import collate_packed_shared
    from lorakit.model.attention import use_varlen_attention
    from lorakit.model.checkpointing import apply_checkpointing
    from lorakit.model.kernels import LOSS_POSITIONS, causal_lm_loss, loss_positions
    from lorakit.model.tiled_mlp import use_tiled_mlp

    torch.manual_seed(0)
    model = lora_model_with_nonzero_b(tiny_llama_dir, dropout=0.0)
    use_varlen_attention(model)
    assert use_tiled_mlp(model, True, chunk_tokens=7) == 2
    apply_checkpointing(model, 1, reentrant=False)
    model.train()
    qa = [("What is hypertension?", "Persistently high blood pressure."), ("What is insulin?", "A hormone."),
          ("What do kidneys do?", "They filter waste from the blood.")]
    examples = render_batch([Conversation((Message("user", q), Message("assistant", a))) for q, a in qa], tokenizer,
                            "Be careful and kind.", 128)
    packed = collate_packed(examples)
    packed[LOSS_POSITIONS] = loss_positions(packed["labels"])
    shared = collate_packed_shared(examples)
    assert shared["input_ids"].shape[1] < packed["input_ids"].shape[1]
    results = []
    for batch in (packed, shared):
        model.zero_grad(set_to_none=True)
        loss = causal_lm_loss(model, batch, num_items_in_batch=len(packed[LOSS_POSITIONS]))
        loss.backward()
        results.append((float(loss), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    (packed_loss, packed_grads), (shared_loss, shared_grads) = results
    assert abs(packed_loss - shared_loss) < 1e-5
    assert max(float((packed_grads[n] - shared_grads[n]).abs().max()) for n in packed_grads) < 1e-5


def test_packed_sft_shares_only_where_the_fused_head_runs_and_pairs_wherever_varlen_runs(monkeypatch, caplog):
    """Packed SFT shares prefixes only with an LM head the fused loss runs on (else one WARNING and whole examples);
    preference pairs take the model's own logits instead, so they share with any head; neither shares without
    lorakit_varlen attention."""
    from lorakit.training import session

    fusable, varlen = [True], [True]
    monkeypatch.setattr(session, "unwrap_peft_model", lambda model: model)
    monkeypatch.setattr(session, "lm_head_is_fusable", lambda base: fusable[0])
    monkeypatch.setattr(session, "uses_varlen_attention", lambda model: varlen[0])
    sft, dpo = _config("sft", packing=True), _config("dpo", packing=False)
    assert session.takes_shared_prefixes(sft, model=object()) and session.takes_shared_prefixes(dpo, model=object())
    fusable[0] = False
    with caplog.at_level("WARNING"):
        caplog.clear()
        assert session.takes_shared_prefixes(sft, model=object()) is False
    assert "LM head is quantized" in caplog.text and "training.shared_prefix has no effect" in caplog.text
    assert session.takes_shared_prefixes(dpo, model=object()) is True
    varlen[0] = False
    with caplog.at_level("WARNING"):
        caplog.clear()
        assert session.takes_shared_prefixes(dpo, model=object()) is False
    assert "cannot take lorakit_varlen attention" in caplog.text
