"""A pair whose prompt fills max_length leaves an answer with no tokens: every preference method refuses it before
training (file, line, field; exit 2), and SimPO's and ORPO's length-averaged log-probs, which would divide 0 by 0,
stay finite on a batch that holds one anyway (a floor of one token)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from conftest import lora_model_with_nonzero_b
from lorakit.cli.app import run_cli
from lorakit.config import RunConfig
from lorakit.data.conversation import Message
from lorakit.data.masking import IGNORE_INDEX
from lorakit.data.preference import PreferencePair
from lorakit.data.preference_batch import collate_preferences, render_preferences
from lorakit.errors import DataError
from lorakit.training.dataset import prepare_data
from lorakit.training.preference_loss import preference_loss

TOKENIZER = str(Path(__file__).resolve().parents[1] / "fixtures" / "smollm2-tokenizer")
NOTHING_LEFT = "the prompt fills max_length 160, so truncation leaves nothing of this answer to train on"


@pytest.mark.parametrize("method", ["orpo", "simpo"])
def test_a_prompt_longer_than_max_length_is_refused_with_file_line_and_field(method, tmp_path, tokenizer):
    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps({"prompt": "Q?", "chosen": "Blood pressure.", "rejected": "A vitamin."}) + "\n"
                    + json.dumps({"prompt": "word " * 300, "chosen": "Yes.", "rejected": "No."}) + "\n")
    config = RunConfig.model_validate({"model": {"max_length": 160}, "training": {"method": method},
                                       "data": {"train_file": str(path), "validation_split": 0, "test_split": 0}})
    with pytest.raises(DataError) as refused:
        prepare_data(config, tokenizer)
    assert refused.value.exit_code == 2
    assert refused.value.message == (
        f"{path}: 2 problems in the data; preference training did not start:\n"
        f"  {path}:2: error: field 'chosen': {NOTHING_LEFT}\n  {path}:2: error: field 'rejected': {NOTHING_LEFT}")
    assert run_cli(["data", "check", str(path), "--tokenizer", TOKENIZER, "--max-length", "160"]) == 2


@pytest.mark.parametrize("method", ["orpo", "simpo"])
def test_an_answer_with_no_tokens_left_keeps_the_loss_and_gradients_finite(method, tiny_llama_dir, tokenizer):
    torch.manual_seed(0)
    model = lora_model_with_nonzero_b(tiny_llama_dir, dropout=0.0)
    pairs = [PreferencePair((Message("user", q),), a, "Ask someone else.") for q, a in
             (("What is BP?", "Blood pressure."), ("What is HR?", "Heart rate."))]
    first, second = render_preferences(pairs, tokenizer, "Be careful.", 128)
    emptied = replace(first.rejected, labels=[IGNORE_INDEX] * len(first.rejected.labels))  # cut away by max_length
    batch = collate_preferences([replace(first, rejected=emptied), second], tokenizer.pad_token_id)
    result = preference_loss(model, batch, method, beta=0.1)
    result.loss.backward()
    assert torch.isfinite(result.loss)
    assert float(result.rejected_rewards[0]) == 0.0  # 0 / 1 token: a mean log-prob of 0, not 0 / 0
    gradients = [p.grad for p in model.parameters() if p.requires_grad]
    assert gradients and all(torch.isfinite(g).all() for g in gradients)


@pytest.mark.parametrize("mean", [0.0, -1e-9, -1e-20, -1e-3])
def test_orpo_gradients_stay_finite_for_a_mean_log_prob_next_to_zero(mean):
    """A short answer the model is all but certain of has a mean log-prob like -1e-9 (fp32 log_softmax of a logit
    ahead by ~21): exp(mean) rounds to 1, and the branch of log(1 - exp(x)) that torch.where does not select, log1p(-1)
    = -inf, used to send 0 x inf = NaN back to the chosen mean and from it to every LoRA weight."""
    from lorakit.training.preference_loss import orpo_loss

    chosen = torch.tensor([mean, -0.5], requires_grad=True)
    rejected = torch.tensor([-1.0, -1.0], requires_grad=True)
    result = orpo_loss(chosen, rejected, torch.tensor(1.0), beta=0.1)
    result.loss.backward()
    assert torch.isfinite(result.loss)
    assert torch.isfinite(chosen.grad).all() and torch.isfinite(rejected.grad).all()
    assert float(chosen.grad[1]) == pytest.approx(-0.0348272, rel=1e-5)  # the other pair's gradient is unchanged
