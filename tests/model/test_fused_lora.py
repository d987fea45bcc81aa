"""The fused LoRA add computes what peft computes: same outputs, same gradients, same dropout masks."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import lora_model_with_nonzero_b
from lorakit.model.fused_lora import FusedLoraAdd, use_fused_lora


def _step(model, input_ids):
    model.train()
    torch.manual_seed(123)  # the same dropout masks in both models
    out = model(input_ids=input_ids, labels=input_ids)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return out.logits.detach(), out.loss.detach(), grads


@pytest.mark.parametrize("architecture", ["tiny_phi3_dir", "tiny_llama_dir"])
def test_fused_forward_and_gradients_equal_peft(architecture, request):
    model_dir = request.getfixturevalue(architecture)
    reference = lora_model_with_nonzero_b(model_dir)
    fused = copy.deepcopy(reference)
    adapted = sum(1 for n, _ in reference.named_modules() if n.endswith(".lora_A"))
    assert use_fused_lora(fused) == adapted > 0
    input_ids = torch.randint(3, 49152, (2, 24), generator=torch.Generator().manual_seed(0))
    logits, loss, grads = _step(reference, input_ids)
    fused_logits, fused_loss, fused_grads = _step(fused, input_ids)
    torch.testing.assert_close(fused_logits, logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused_loss, loss, rtol=1e-6, atol=1e-6)
    assert fused_grads.keys() == grads.keys() and any(g.abs().sum() > 0 for g in grads.values())
    for name in grads:
        torch.testing.assert_close(fused_grads[name], grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_fused_add_gradients_match_autograd_of_the_plain_formula():
    torch.manual_seed(0)
    base = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
    dropped = torch.randn(3, 5, 4, dtype=torch.float64, requires_grad=True)
    weight_a = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    weight_b = torch.randn(7, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: FusedLoraAdd.apply(t[0].clone(), *t[1:], 1.5),
                                    (base, dropped, weight_a, weight_b))


def test_dora_layers_keep_peft_forward(tiny_llama_dir):
    model = lora_model_with_nonzero_b(tiny_llama_dir, use_dora=True)
    assert use_fused_lora(model) == 0


def test_disabled_adapter_falls_back_to_peft(tiny_llama_dir):
    """With the adapter disabled (as for the base model's answers in eval) the output is the base model's."""
    model = lora_model_with_nonzero_b(tiny_llama_dir)
    use_fused_lora(model)
    model.eval()
    input_ids = torch.randint(3, 49152, (1, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        with model.disable_adapter():
            base_logits = model(input_ids=input_ids).logits
        tuned_logits = model(input_ids=input_ids).logits
        from transformers import AutoModelForCausalLM

        plain = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()  # no LoRA at all
        plain_logits = plain(input_ids=input_ids).logits
    assert not torch.allclose(base_logits, tuned_logits)
    torch.testing.assert_close(base_logits, plain_logits)
