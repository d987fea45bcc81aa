"""Packed SFT rows with the shared system prompt computed once (data/shared_packing.py) give the packed rows' loss and
LoRA gradients (fp32, within 1e-5) through lorakit_varlen's reference attention, on a tiny Llama (grouped k/v heads)
and a tiny Phi3; with an example that shares nothing beyond the template and a duplicate example in the row. A
packed run trains the same with training.shared_prefix on and off."""

from __future__ import annotations

import pytest
import torch

from conftest import lora_model_with_nonzero_b, metric_records, tiny_run_config
from lorakit.data.conversation import Conversation, Message
from lorakit.data.packing import collate_packed
from lorakit.data.render import render_batch
from lorakit.data.shared_packing import collate_packed_shared
from lorakit.model.attention import use_varlen_attention
from lorakit.model.kernels import LOSS_POSITIONS, causal_lm_loss, loss_positions
from lorakit.training import batches
from lorakit.training.loop import train

TOLERANCE = 1e-5
SYSTEM = "You are a careful assistant for medical education. Say when a question needs a clinician."
QA = [("What is hypertension?", "Persistently high blood pressure."),
      ("What do kidneys do?", "They filter waste from the blood into urine."),
      ("What is insulin?", "A hormone that lowers blood sugar."),
      ("What do kidneys do?", "They filter waste from the blood into urine."),  # a duplicate of the second
      ("What do kidneys do?", "They filter air.")]  # shares into the answer: its first own token is labelled


@pytest.fixture(scope="module", params=["tiny_llama_dir", "tiny_phi3_dir"])
def setup(request, tokenizer):
    torch.manual_seed(0)
    model = lora_model_with_nonzero_b(request.getfixturevalue(request.param), dropout=0.0)
    use_varlen_attention(model)
    model.train()
    conversations = [Conversation((Message("user", q), Message("assistant", a))) for q, a in QA]
    examples = render_batch(conversations, tokenizer, SYSTEM, 128)
    # another system prompt: it shares only the template's opening tokens with the rest
    examples += render_batch([Conversation((Message("user", "Define anemia."), Message("assistant", "Too little "
                                                                                             "hemoglobin.")))],
                             tokenizer, "Be brief.", 128)
    packed = collate_packed(examples)
    packed[LOSS_POSITIONS] = loss_positions(packed["labels"])
    return model, packed, collate_packed_shared(examples), examples


def _loss_and_grads(model, batch, tokens):
    model.zero_grad(set_to_none=True)
    loss = causal_lm_loss(model, batch, num_items_in_batch=tokens)
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return float(loss.detach()), grads


def test_the_row_shares_the_system_prompt_once(setup, tokenizer):
    _, packed, shared, examples = setup
    prompt = len(tokenizer.apply_chat_template([{"role": "system", "content": SYSTEM}], tokenize=True))
    positions = shared["input_ids"].shape[1]
    # the five examples with SYSTEM share at least it; the duplicate computes nothing of its own
    assert positions <= packed["input_ids"].shape[1] - 4 * (prompt - 2)
    assert shared["cu_seq_lens_q"].numel() - 1 == len(examples) - 1
    assert len(shared["predicted_labels"]) == len(packed[LOSS_POSITIONS])


def test_loss_and_lora_gradients_equal_the_packed_rows(setup):
    model, packed, shared, _ = setup
    tokens = len(packed[LOSS_POSITIONS]) + 3  # token-weighted: the step's count, not this micro-batch's
    packed_loss, packed_grads = _loss_and_grads(model, packed, tokens)
    shared_loss, shared_grads = _loss_and_grads(model, shared, tokens)
    assert abs(packed_loss - shared_loss) < TOLERANCE
    assert all(float(g.abs().max()) > 0 for g in packed_grads.values())
    assert max(float((packed_grads[n] - shared_grads[n]).abs().max()) for n in packed_grads) < TOLERANCE


def test_a_packed_run_trains_the_same_with_and_without_sharing(tiny_llama_dir, qa_file, tmp_path, monkeypatch):
    made = []
    monkeypatch.setattr(batches, "collate_packed_shared", lambda examples: made.append(len(examples))
                        or collate_packed_shared(examples))
    losses = []
    for shared in (True, False):
        config = tiny_run_config(tiny_llama_dir, qa_file, tmp_path / str(shared), max_steps=1, save_steps=10,
                                 eval_steps=1, packing=True, shared_prefix=shared, batch_size=4)
        # no LoRA dropout: its masks are drawn per computed position, so sharing changes the draws
        train(config.model_copy(update={"lora": config.lora.model_copy(update={"dropout": 0.0})}))
        losses.append([(r.get("train_loss"), r.get("val_loss")) for r in metric_records(tmp_path / str(shared))])
        assert (max(made, default=0) > 1) == shared  # the shared run collated rows of several examples, the other none
        made.clear()
    assert len(losses[0]) == len(losses[1]) and all(value is not None for value in losses[0][-1])  # train and val
    for with_sharing, without in zip(*losses):
        assert with_sharing == pytest.approx(without, abs=1e-5)
