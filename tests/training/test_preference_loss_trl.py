"""The correctness anchor of preference tuning: on a tiny random model and one fixed batch, lorakit's DPO, ORPO
and SimPO losses, rewards and LoRA gradients equal TRL 1.16.0's own trainers (fp32, within 1e-5).

TRL is given exactly lorakit's batch (same ids, same answer masks), through each trainer's own batch entry
point: `DPOTrainer.compute_loss`, `ORPOTrainer.get_batch_loss_metrics`, `CPOTrainer.get_batch_loss_metrics`.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from conftest import lora_model_with_nonzero_b
from lorakit.data.conversation import Message
from lorakit.data.masking import IGNORE_INDEX
from lorakit.data.preference import PreferencePair
from lorakit.data.preference_batch import collate_preferences, render_preferences
from lorakit.training.preference_loss import REFERENCE_ADAPTER, add_reference_adapter, preference_loss

trl = pytest.importorskip("trl")  # the test extra pins trl==1.16.0
TOLERANCE = 1e-5
PAIRS = [
    PreferencePair((Message("user", "What is hypertension?"),), "Persistently high blood pressure.",
                   "A low mood."),
    PreferencePair((Message("user", "What do kidneys do?"),), "They filter waste from the blood into urine.",
                   "They pump blood."),
    PreferencePair((Message("user", "What is insulin?"),), "A hormone that lowers blood glucose.",
                   "A vitamin found in fruit that you can take whenever you like."),
]


@pytest.fixture(scope="module")
def setup(tiny_llama_dir, tokenizer):
    torch.manual_seed(0)
    model = lora_model_with_nonzero_b(tiny_llama_dir, dropout=0.0)  # no dropout: both sides see one function
    model.train()
    batch = collate_preferences(render_preferences(PAIRS, tokenizer, "Be careful.", 128), tokenizer.pad_token_id)
    return model, batch


def _lora_grads(model) -> dict[str, torch.Tensor]:
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    assert grads and all(g is not None for g in grads.values())
    model.zero_grad(set_to_none=True)
    return grads


def _max_grad_diff(ours: dict, theirs: dict) -> float:
    assert ours.keys() == theirs.keys()
    assert all(float(g.abs().max()) > 0 for g in ours.values()), "every LoRA matrix gets a gradient"
    return max(float((ours[k] - theirs[k]).abs().max()) for k in ours)


def _ours(model, batch, method, **settings):
    model.zero_grad(set_to_none=True)
    result = preference_loss(model, batch, method, **settings)
    result.loss.backward()
    return result, _lora_grads(model)


def _dataset():
    from datasets import Dataset

    return Dataset.from_list([{"prompt": p.prompt[0].content, "chosen": p.chosen, "rejected": p.rejected}
                              for p in PAIRS])


def _args(config_class, tmp_path, **settings):
    return config_class(output_dir=str(tmp_path), report_to=[], use_cpu=True, bf16=False, gradient_checkpointing=False,
                        per_device_train_batch_size=len(PAIRS), max_length=128, **settings)


def _trl_dpo(model, batch, tokenizer, tmp_path, after_init=None) -> tuple[torch.Tensor, dict, dict]:
    """TRL's DPO loss, logged metrics and LoRA gradients on `batch`; `after_init(model)` runs once the trainer
    has set the model up."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = trl.DPOTrainer(model=model, args=_args(trl.DPOConfig, tmp_path, beta=0.1),
                                 train_dataset=_dataset(), processing_class=tokenizer)
    if after_init is not None:
        after_init(model)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
              "completion_mask": (batch["labels"] != IGNORE_INDEX).long()}
    loss = trainer.compute_loss(trainer.model, inputs)
    loss.backward()
    metrics = {key: value[-1] for key, value in trainer._metrics["train"].items()}
    return loss.detach(), metrics, _lora_grads(model)


def _reward_diffs(ours, theirs_loss, metrics: dict, our_grads, their_grads) -> dict[str, float]:
    """Max abs differences; TRL logs batch means of the per-pair rewards, margins and accuracies."""
    return {"loss": abs(float(ours.loss.detach()) - float(theirs_loss)),
            "rewards_chosen": abs(float(ours.chosen_rewards.mean()) - metrics["rewards/chosen"]),
            "rewards_rejected": abs(float(ours.rejected_rewards.mean()) - metrics["rewards/rejected"]),
            "rewards_margin": abs(float(ours.margins.mean()) - metrics["rewards/margins"]),
            "rewards_accuracy": abs(float(ours.accuracies.mean()) - metrics["rewards/accuracies"]),
            "lora_grads": _max_grad_diff(our_grads, their_grads)}


def test_dpo_equals_trl_dpo_trainer_with_the_adapter_switched_off(setup, tokenizer, tmp_path):
    model, batch = setup
    ours, our_grads = _ours(model, batch, "dpo", beta=0.1)
    # Given a model whose adapter is already trained, TRL copies it as a frozen "ref" adapter; without that copy its
    # reference is the adapter switched off (its "new adapter" path), as lorakit's is for a fresh adapter.
    theirs_loss, metrics, their_grads = _trl_dpo(copy.deepcopy(model), batch, tokenizer, tmp_path,
                                                 after_init=lambda m: m.delete_adapter("ref"))
    diffs = _reward_diffs(ours, theirs_loss, metrics, our_grads, their_grads)
    print("DPO (reference: adapter off) max abs diff vs TRL 1.16.0:", diffs)
    assert max(diffs.values()) < TOLERANCE, diffs
    assert float(ours.margins.abs().min()) > 1e-2, "the adapter moves the policy away from the reference"
    assert ours.accuracies.tolist() == [0.0, 1.0, 1.0]  # a mixed batch: accuracy is not trivially 0 or 1


def _nudge_adapter(model) -> None:
    """A fixed change of the trained adapter (as a few optimizer steps would make), the reference untouched."""
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, parameter in sorted(model.named_parameters()):
            if ".default." in name and "lora_B" in name:
                parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))


def test_dpo_from_a_trained_adapter_equals_trl_with_its_reference_copy(setup, tokenizer, tmp_path):
    model, batch = setup
    ours_model = copy.deepcopy(model)
    add_reference_adapter(ours_model)
    _nudge_adapter(ours_model)
    ours, our_grads = _ours(ours_model, batch, "dpo", beta=0.1)
    frozen = [p for n, p in ours_model.named_parameters() if f".{REFERENCE_ADAPTER}." in n]
    assert frozen and not any(p.requires_grad for p in frozen), "the reference adapter stays frozen"
    theirs_loss, metrics, their_grads = _trl_dpo(copy.deepcopy(model), batch, tokenizer, tmp_path,
                                                 after_init=_nudge_adapter)
    diffs = _reward_diffs(ours, theirs_loss, metrics, our_grads, their_grads)
    print("DPO (reference: the starting adapter) max abs diff vs TRL 1.16.0:", diffs)
    assert max(diffs.values()) < TOLERANCE, diffs
    assert float(ours.margins.abs().min()) > 1e-2


def _pair_batch(batch):
    """TRL's ORPO/CPO batch: the chosen and rejected halves as separate padded tensors."""
    half = batch["input_ids"].shape[0] // 2
    out = {}
    for name, rows in (("chosen", slice(0, half)), ("rejected", slice(half, None))):
        out[f"{name}_input_ids"] = batch["input_ids"][rows]
        out[f"{name}_attention_mask"] = batch["attention_mask"][rows]
        out[f"{name}_labels"] = batch["labels"][rows]
    return out


def _odds_trainer(trainer_class, config_class, model, tokenizer, tmp_path, **settings):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return trainer_class(model=model, args=_args(config_class, tmp_path, **settings), train_dataset=_dataset(),
                             processing_class=tokenizer)


def test_orpo_equals_trl_orpo_trainer(setup, tokenizer, tmp_path):
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    model, batch = setup
    half = batch["input_ids"].shape[0] // 2
    # TRL's ORPO scores its NLL on the whole chosen sequence (prompt too); lorakit trains the answer only by
    # default, and is given TRL's targets here to compare the same quantity.
    trl_nll_labels = batch["input_ids"][:half].masked_fill(batch["attention_mask"][:half] == 0, IGNORE_INDEX)
    ours, our_grads = _ours(model, batch, "orpo", beta=0.1, nll_labels=trl_nll_labels)
    theirs_model = copy.deepcopy(model)
    trainer = _odds_trainer(ORPOTrainer, ORPOConfig, theirs_model, tokenizer, tmp_path, beta=0.1)
    theirs_loss, metrics = trainer.get_batch_loss_metrics(theirs_model, _pair_batch(batch))
    theirs_loss.backward()
    diffs = _reward_diffs(ours, theirs_loss, metrics, our_grads, _lora_grads(theirs_model))
    print("ORPO max abs diff vs TRL 1.16.0:", diffs)
    assert max(diffs.values()) < TOLERANCE, diffs
    answer_only, _ = _ours(model, batch, "orpo", beta=0.1)  # lorakit's default NLL: the chosen answers only
    assert abs(float(answer_only.loss) - float(ours.loss)) > 1e-2


def test_simpo_equals_trl_cpo_trainer_simpo(setup, tokenizer, tmp_path):
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    model, batch = setup
    ours, our_grads = _ours(model, batch, "simpo", beta=2.0, simpo_gamma=0.5)
    theirs_model = copy.deepcopy(model)
    trainer = _odds_trainer(CPOTrainer, CPOConfig, theirs_model, tokenizer, tmp_path, loss_type="simpo",
                            cpo_alpha=0.0, beta=2.0, simpo_gamma=0.5)
    theirs_loss, metrics = trainer.get_batch_loss_metrics(theirs_model, _pair_batch(batch))
    theirs_loss.backward()
    diffs = _reward_diffs(ours, theirs_loss, metrics, our_grads, _lora_grads(theirs_model))
    print("SimPO max abs diff vs TRL 1.16.0 (CPOTrainer, loss_type=simpo):", diffs)
    assert max(diffs.values()) < TOLERANCE, diffs


def test_orpo_odds_ratio_equals_trl_where_answers_are_likely():
    """A random model gives every token p ~ 1e-5, where log odds ~ log p and ORPO's log(1 - p) terms vanish below
    the tolerance; a trained model's answers are likely, and there the odds ratio differs from the plain ratio."""
    from types import SimpleNamespace

    from trl.experimental.orpo import ORPOTrainer

    from lorakit.training.preference_loss import orpo_loss

    chosen = torch.tensor([-0.05, -0.4, -1.2, -3.0], requires_grad=True)
    rejected = torch.tensor([-0.3, -0.1, -2.5, -0.7])
    nll = torch.tensor(0.8)
    trl_self = SimpleNamespace(beta=0.25, accelerator=SimpleNamespace(device=torch.device("cpu")))
    losses, their_chosen, their_rejected, _, _ = ORPOTrainer.odds_ratio_loss(trl_self, chosen, rejected)
    theirs = nll - losses.mean()  # ORPOTrainer.get_batch_loss_metrics
    (their_grad,) = torch.autograd.grad(theirs, chosen)
    ours = orpo_loss(chosen, rejected, nll, beta=0.25)
    (our_grad,) = torch.autograd.grad(ours.loss, chosen)
    assert abs(float(ours.loss) - float(theirs)) < 1e-7
    assert torch.allclose(our_grad, their_grad, atol=1e-7, rtol=0)
    assert torch.equal(ours.chosen_rewards, their_chosen) and torch.equal(ours.rejected_rewards, their_rejected)
    plain_ratio = nll - (0.25 * torch.nn.functional.logsigmoid(chosen - rejected)).mean()
    assert abs(float(ours.loss) - float(plain_ratio)) > 1e-2  # the odds terms matter here
