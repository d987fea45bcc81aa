"""Shared-prefix preference batches (each pair's common prompt computed once, padding-free) give the padded path's
per-row log-probs, DPO/ORPO/SimPO losses, rewards and LoRA gradients (fp32, within 1e-5), through lorakit_varlen's
reference attention with its explicit bottom-right causal mask, on a tiny Llama (grouped k/v heads) and a tiny Phi3."""

from __future__ import annotations

import pytest
import torch

from conftest import lora_model_with_nonzero_b
from lorakit.data.conversation import Message
from lorakit.data.preference import PreferencePair
from lorakit.data.preference_batch import collate_preferences, collate_preferences_shared, render_preferences
from lorakit.data.shared_prefix import common_prefix_length
from lorakit.model.attention import use_varlen_attention
from lorakit.training.preference_loss import add_reference_adapter, preference_loss, row_logps

TOLERANCE = 1e-5
PAIRS = [
    PreferencePair((Message("user", "What is hypertension?"),), "Persistently high blood pressure.", "A low mood."),
    # the answers share their first words: the common prefix runs into the answers
    PreferencePair((Message("user", "What do kidneys do?"),), "They filter waste from the blood into urine.",
                   "They filter air."),
    # the chosen answer is a prefix of the rejected one (up to the end-of-turn token)
    PreferencePair((Message("user", "What is insulin?"),), "A hormone", "A hormone that you can take whenever you like."),
]


@pytest.fixture(scope="module", params=["tiny_llama_dir", "tiny_phi3_dir"])
def setup(request, tokenizer):
    torch.manual_seed(0)
    model = lora_model_with_nonzero_b(request.getfixturevalue(request.param), dropout=0.0)
    use_varlen_attention(model)  # padded rows run through it too (one example per row)
    model.train()
    examples = render_preferences(PAIRS, tokenizer, "Be careful.", 128)
    return model, collate_preferences(examples, tokenizer.pad_token_id), collate_preferences_shared(examples), examples


def test_the_hand_pairs_share_into_their_answers(setup, tokenizer):
    _, padded, shared, examples = setup
    prompt = len(tokenizer.apply_chat_template([{"role": "system", "content": "Be careful."},
                                                {"role": "user", "content": "What do kidneys do?"}],
                                               add_generation_prompt=True))
    shared_lengths = [common_prefix_length(e.chosen.input_ids, e.rejected.input_ids) for e in examples]
    assert shared_lengths[1] > prompt  # "They filter" is shared too
    assert shared_lengths[2] == len(examples[2].chosen.input_ids) - 2  # all of the chosen row but "<|im_end|>\n"
    assert shared["input_ids"].shape[1] == sum(e.tokens for e in examples) - sum(shared_lengths)
    assert int((padded["labels"] != -100).sum()) == len(shared["predicted_labels"])


def _grads(model) -> dict[str, torch.Tensor]:
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return grads


def test_per_row_log_probs_equal_the_padded_rows(setup):
    model, padded, shared, _ = setup
    with torch.no_grad():
        (padded_sums, padded_counts), (shared_sums, shared_counts) = row_logps(model, padded), row_logps(model, shared)
    assert padded_counts.tolist() == shared_counts.tolist()
    # sums of ~100 nats in fp32: one ulp is 7.6e-6, so the bound is relative (float order differs between layouts)
    torch.testing.assert_close(shared_sums, padded_sums, rtol=1e-6, atol=TOLERANCE)


@pytest.mark.parametrize("method", ["dpo", "orpo", "simpo"])
def test_loss_rewards_and_lora_gradients_equal_the_padded_path(setup, method):
    model, padded, shared, _ = setup
    results, grads = [], []
    for batch in (padded, shared):
        model.zero_grad(set_to_none=True)
        result = preference_loss(model, batch, method, beta=0.1)
        result.loss.backward()
        results.append(result)
        grads.append(_grads(model))
    assert abs(float(results[0].loss) - float(results[1].loss)) < TOLERANCE
    for field in ("chosen_rewards", "rejected_rewards"):
        assert float((getattr(results[0], field) - getattr(results[1], field)).abs().max()) < TOLERANCE
    assert all(float(g.abs().max()) > 0 for g in grads[0].values())
    assert max(float((grads[0][n] - grads[1][n]).abs().max()) for n in grads[0]) < TOLERANCE


def test_kv_index_reaches_checkpointed_layers(tiny_llama_dir, tokenizer):
    """lorakit checkpoints the first layers (model/checkpointing.py, reentrant by default): the gather index must
    reach their attention in the recompute too, or the gradients would differ from the padded rows'."""
    from lorakit.model.checkpointing import apply_checkpointing

    torch.manual_seed(0)
    model = lora_model_with_nonzero_b(tiny_llama_dir, dropout=0.0)
    use_varlen_attention(model)
    apply_checkpointing(model, 1, reentrant=True)
    model.train()
    examples = render_preferences(PAIRS, tokenizer, "Be careful.", 128)
    grads = []
    for batch in (collate_preferences(examples, tokenizer.pad_token_id), collate_preferences_shared(examples)):
        preference_loss(model, batch, "simpo", beta=2.0).loss.backward()
        grads.append(_grads(model))
    assert max(float((grads[0][n] - grads[1][n]).abs().max()) for n in grads[0]) < TOLERANCE


def test_the_reference_adapter_pass_goes_through_the_flat_row_too(tiny_llama_dir, tokenizer):
    torch.manual_seed(1)
    model = lora_model_with_nonzero_b(tiny_llama_dir, dropout=0.0)
    add_reference_adapter(model)
    with torch.no_grad():
        for parameter in (p for n, p in model.named_parameters() if "lora_B.default" in n):
            parameter.add_(0.1)  # the policy moved away from its reference
    use_varlen_attention(model)
    examples = render_preferences(PAIRS, tokenizer, "Be careful.", 128)
    padded, shared = collate_preferences(examples, tokenizer.pad_token_id), collate_preferences_shared(examples)
    ours, theirs = (preference_loss(model, batch, "dpo", beta=0.1) for batch in (shared, padded))
    assert float(ours.margins.abs().max()) > 1e-3  # the reference differs from the policy
    assert abs(float(ours.loss) - float(theirs.loss)) < TOLERANCE
    assert float((ours.margins - theirs.margins).abs().max()) < TOLERANCE


def test_a_resume_refuses_a_switched_layout_but_not_a_checkpoint_from_before_it_was_recorded():
    """The layouts agree only up to float rounding, so a resume that switched training.shared_prefix would not be
    bit-exact; a checkpoint written before the key was recorded still resumes (with the layout configured now, as
    for the other keys recorded later)."""
    from lorakit.errors import CheckpointError
    from lorakit.training.resume_drift import check_same_run

    with pytest.raises(CheckpointError, match="training.shared_prefix changed since the checkpoint"):
        check_same_run({"preference_shared_prefix": True}, {"preference_shared_prefix": False})
    check_same_run({}, {"preference_shared_prefix": True})
