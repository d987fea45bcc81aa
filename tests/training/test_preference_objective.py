"""The preference objective: pair-weighted accumulation (1 x 4 == 2 x 2) and logged reward metrics."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from conftest import QA_PAIRS, lora_model_with_nonzero_b
from lorakit.config import TrainingConfig
from lorakit.data.conversation import Message
from lorakit.data.preference import PreferencePair
from lorakit.data.preference_batch import collate_preferences, render_preferences
from lorakit.training.preference_objective import PreferenceObjective

PAIRS = [PreferencePair((Message("user", q),), a, "I am not sure, ask someone else.") for q, a in QA_PAIRS[:4]]


@pytest.mark.parametrize("method", ["dpo", "simpo"])
def test_one_micro_batch_of_four_pairs_equals_two_of_two(method, tiny_llama_dir, tokenizer):
    torch.manual_seed(0)
    model = lora_model_with_nonzero_b(tiny_llama_dir, dropout=0.0)
    session = SimpleNamespace(model=model, tokenizer=tokenizer, device=torch.device("cpu"))
    examples = render_preferences(PAIRS, tokenizer, "Be careful.", 128)
    objective = PreferenceObjective(TrainingConfig(method=method))

    def gradients(groups):
        model.zero_grad(set_to_none=True)
        batches = [collate_preferences([examples[i] for i in group], tokenizer.pad_token_id) for group in groups]
        pairs = sum(objective.targets(batch) for batch in batches)
        total = 0.0
        for batch in batches:
            loss = objective.loss(session, batch, pairs)
            loss.backward()
            total += float(loss.detach())
        return total, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    whole_loss, whole = gradients([[0, 1, 2, 3]])
    whole_metrics = objective.logged_metrics()
    split_loss, split = gradients([[0, 1], [2, 3]])
    assert abs(whole_loss - split_loss) < 1e-6
    assert max(float((whole[n] - split[n]).abs().max()) for n in whole) < 1e-6
    assert objective.logged_metrics() == pytest.approx(whole_metrics, abs=1e-6)
    assert set(whole_metrics) == {"rewards_chosen", "rewards_rejected", "rewards_margin", "rewards_accuracy"}
    assert objective.logged_metrics() == {}  # reset once logged


def test_chunked_token_log_probs_equal_log_softmax_in_value_and_gradient():
    from lorakit.training.preference_loss import _ChunkedTokenLogps

    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(10, 16, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, 50, (10,), generator=generator)
    upstream = torch.randn(10, generator=generator, dtype=torch.float64)
    chunked = _ChunkedTokenLogps.apply(hidden, weight, targets, 3)  # 3 rows a chunk: 4 chunks, the last short
    (chunked_grad,) = torch.autograd.grad(chunked, hidden, upstream)
    naive = (hidden @ weight.T).log_softmax(-1).gather(1, targets[:, None]).squeeze(1)
    (naive_grad,) = torch.autograd.grad(naive, hidden, upstream)
    assert torch.allclose(chunked.double(), naive, atol=1e-6)  # forward in fp32, as on the GPU
    assert torch.allclose(chunked_grad, naive_grad, atol=1e-6)


def test_the_memory_plan_counts_both_sequences_of_a_pair():
    """A padded micro-batch of b pairs is 2b rows: DPO at micro-batch 2 is planned as SFT at micro-batch 4 (both
    padded rows under sdpa's padding mask; SFT without LoRA dropout, as preference methods train), plus the
    preference head's logits chunk (the answers' log-probs do not go through SFT's fused loss)."""
    from conftest import PHI4_MINI
    from lorakit.config import RunConfig
    from lorakit.plan.memory import logit_chunk_bytes
    from lorakit.plan.run_plan import plan_training

    def plan(method, batch_size):
        config = RunConfig.model_validate({
            "model": {"quantization": "nf4", "max_length": 512}, "data": {"train_file": "x.jsonl"},
            "lora": {"dropout": 0.0}, "training": {"method": method, "batch_size": batch_size,
                                                   "gradient_checkpointing": True, "shared_prefix": False}})
        return plan_training(config, PHI4_MINI, 80 * 2**30, dtype_bytes=2, nf4_available=True, longest_example=300)

    dpo, sft = plan("dpo", 2), plan("sft", 4)
    assert dpo.chosen.settings.tokens_per_micro_batch == sft.chosen.settings.tokens_per_micro_batch == 4 * 300
    assert dpo.chosen.estimate.peak_allocated == sft.chosen.estimate.peak_allocated + logit_chunk_bytes(1200, 200064)
    assert plan("sft", 2).chosen.estimate.peak_allocated < dpo.chosen.estimate.peak_allocated


@pytest.mark.parametrize("settings, message", [
    ({"training": {"method": "dpo", "packing": True}}, "packing is not supported for it: set packing: false"),
    ({"training": {"method": "orpo", "distributed": "fsdp"}}, "not supported with distributed: fsdp"),
    ({"training": {"method": "simpo"}, "data": {"train_file": "x.jsonl", "skip_invalid": True}},
     "data.skip_invalid is not supported with training.method simpo"),
])
def test_a_preference_method_refuses_settings_it_cannot_honour(settings, message):
    from pydantic import ValidationError

    from lorakit.config import RunConfig

    with pytest.raises(ValidationError, match=message):
        RunConfig.model_validate({"data": {"train_file": "x.jsonl"}, **settings})


def test_the_memory_plan_counts_what_a_shared_prefix_micro_batch_holds():
    """With shared prefixes a pair puts |P| + |C| + |R| positions in the micro-batch, not 2 x its longer row; the
    rejected rows' second read of the prefix adds keys and values only."""
    from conftest import PHI4_MINI
    from lorakit.config import RunConfig
    from lorakit.data.preference_batch import PairLayout
    from lorakit.plan.memory import ModelShape, layer_activation_bytes
    from lorakit.plan.run_plan import plan_training

    def plan(method, batch_size, pairs=None):
        config = RunConfig.model_validate({
            "model": {"quantization": "nf4", "max_length": 512}, "data": {"train_file": "x.jsonl"},
            "training": {"method": method, "batch_size": batch_size, "gradient_checkpointing": True}})
        return plan_training(config, PHI4_MINI, 80 * 2**30, dtype_bytes=2, nf4_available=True, longest_example=300,
                             pairs=pairs)

    shared = plan("dpo", 2, PairLayout(positions=(450, 450), keys=(600, 525)))  # |P| = 150 and 75, |C| = |R| = 150
    sft = plan("sft", 3)  # 3 x 300 = 2 x 450 tokens, the same positions
    assert shared.chosen.settings.tokens_per_micro_batch == sft.chosen.settings.tokens_per_micro_batch == 900
    assert shared.chosen.settings.keys_per_token == 1125 / 900
    # preference methods train without LoRA dropout (training/preference_setup.py): no masks, no dropped copies
    assert sft.chosen.settings.lora_dropout and not shared.chosen.settings.lora_dropout
    shape = ModelShape.from_config(PHI4_MINI)
    extra_keys = layer_activation_bytes(shape, shared.chosen.settings) - layer_activation_bytes(
        shape, replace(shared.chosen.settings, keys_per_token=1.0))
    kv_width = 2 * shape.heads * shape.head_dim if shared.chosen.settings.kv_expanded else 2 * shape.kv_heads * shape.head_dim
    assert extra_keys == round(kv_width * 0.25 * 2)  # a quarter more k and v per token, bf16
    padded = plan("dpo", 2)  # without the data: 2 x max_length per pair, as the padded plan
    assert shared.chosen.estimate.peak_allocated < padded.chosen.estimate.peak_allocated
