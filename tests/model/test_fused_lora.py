"""The fused LoRA add computes what peft computes: same outputs, same gradients, same dropout masks."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch

from conftest import lora_model_with_nonzero_b
from lorakit.model.fused_lora import FusedLoraAdd, LoraLinear, use_fused_lora


def _step(model, input_ids):
    model.train()
    torch.manual_seed(123)  # the same dropout masks in both models
    out = model(input_ids=input_ids, labels=input_ids)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return out.logits.detach(), out.loss.detach(), grads


def _count_whole_layer_calls(monkeypatch) -> list:
    calls, real_apply = [], LoraLinear.apply
    monkeypatch.setattr(LoraLinear, "apply", lambda *args: calls.append(args[3]) or real_apply(*args))
    return calls


@pytest.mark.parametrize("whole_layer", [True, False], ids=["whole-layer", "add-only"])
@pytest.mark.parametrize("architecture", ["tiny_phi3_dir", "tiny_llama_dir"])
def test_fused_forward_and_gradients_equal_peft(architecture, whole_layer, request, monkeypatch):
    """Same logits (so the same dropout masks: dropout 0.1 in training mode), loss and LoRA gradients as peft."""
    if not whole_layer:
        monkeypatch.setenv("LORAKIT_DISABLE", "fused_layer")
    model_dir = request.getfixturevalue(architecture)
    reference = lora_model_with_nonzero_b(model_dir)
    fused = copy.deepcopy(reference)
    adapted = sum(1 for n, _ in reference.named_modules() if n.endswith(".lora_A"))
    assert use_fused_lora(fused) == adapted > 0
    input_ids = torch.randint(3, 49152, (2, 24), generator=torch.Generator().manual_seed(0))
    logits, loss, grads = _step(reference, input_ids)
    whole_layer_calls = _count_whole_layer_calls(monkeypatch)
    fused_logits, fused_loss, fused_grads = _step(fused, input_ids)
    assert len(whole_layer_calls) == (adapted if whole_layer else 0)  # one forward: each adapted layer once
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


def _frozen_linear(fan_in, fan_out, bias):
    frozen = torch.nn.Linear(fan_in, fan_out, bias=bias, dtype=torch.float64)
    frozen.requires_grad_(False)
    return frozen


@pytest.mark.parametrize("p", [0.0, 0.3])
@pytest.mark.parametrize("bias", [False, True])
def test_whole_layer_gradients_match_autograd_of_the_plain_formula(p, bias):
    """gradcheck of x, A and B; with dropout every call draws the same mask (reseeded), as a recompute does."""
    torch.manual_seed(0)
    frozen = _frozen_linear(4, 7, bias)
    x = torch.randn(3, 5, 4, dtype=torch.float64, requires_grad=True)
    weight_a = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    weight_b = torch.randn(7, 2, dtype=torch.float64, requires_grad=True)

    def layer(x, weight_a, weight_b):
        torch.manual_seed(7)
        return LoraLinear.apply(x, weight_a, weight_b, frozen, 1.5, p)

    assert torch.autograd.gradcheck(layer, (x, weight_a, weight_b))
    torch.manual_seed(7)
    dropped = torch.nn.functional.dropout(x, p, training=True)  # the mask nn.Dropout draws from the same seed
    torch.testing.assert_close(layer(x, weight_a, weight_b), frozen(x) + dropped @ weight_a.t() @ weight_b.t() * 1.5)


def test_whole_layer_is_one_backward_node_and_skips_the_input_gradient_when_nothing_needs_it(monkeypatch):
    from lorakit.model import fused_lora

    frozen = _frozen_linear(4, 7, bias=False)
    weight_a = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    weight_b = torch.randn(7, 2, dtype=torch.float64, requires_grad=True)
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    dequantized = []  # the frozen weight is fetched for the input's gradient only
    monkeypatch.setattr(fused_lora, "_frozen_weight",
                        lambda layer, dtype: dequantized.append(layer) or layer.weight.to(dtype))
    out = LoraLinear.apply(x, weight_a, weight_b, frozen, 2.0, 0.1)
    assert type(out.grad_fn).__name__ == "LoraLinearBackward"
    # x, A and B straight to their leaves: no dropout, add or frozen-product node between.
    assert [type(f).__name__ for f, _ in out.grad_fn.next_functions] == ["AccumulateGrad"] * 3
    out.sum().backward()
    assert dequantized == [frozen]
    plain_x = x.detach()  # the first layer's input when nothing before it trains
    out = LoraLinear.apply(plain_x, weight_a, weight_b, frozen, 2.0, 0.0)
    grad_a, grad_b = torch.autograd.grad(out.sum(), (weight_a, weight_b))
    assert dequantized == [frozen]
    ones = torch.ones(5, 7, dtype=torch.float64)
    torch.testing.assert_close(grad_a, (ones @ weight_b * 2.0).t() @ plain_x)
    torch.testing.assert_close(grad_b, ones.t() @ (plain_x @ weight_a.t()) * 2.0)


class _InputDtypeLinear(torch.nn.Linear):
    """Returns its input's dtype whatever autocast computed in, as bitsandbytes' 4-bit layer does."""

    def forward(self, x):
        return super().forward(x).to(x.dtype)


def test_lora_product_under_autocast_when_the_frozen_output_is_fp32():
    """fp16 QLoRA: peft's kbit preparation gives the LoRA layers fp32 inputs, so the frozen output is fp32 while
    autocast runs matrix products in half precision; the in-place LoRA add must still work, in fp32."""
    torch.manual_seed(0)
    frozen = _InputDtypeLinear(8, 6)
    frozen.requires_grad_(False)
    x = torch.randn(2, 5, 8, requires_grad=True)
    weight_a = torch.randn(4, 8, requires_grad=True)
    weight_b = torch.randn(6, 4, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        base = frozen(x)
        whole_layer = LoraLinear.apply(x, weight_a, weight_b, frozen, 2.0, 0.0)
        add_only = FusedLoraAdd.apply(frozen(x.detach()), x, weight_a, weight_b, 2.0)
    expected = base.detach() + (x.detach() @ weight_a.detach().t()) @ weight_b.detach().t() * 2.0
    assert base.dtype == whole_layer.dtype == add_only.dtype == torch.float32
    torch.testing.assert_close(whole_layer, expected)
    torch.testing.assert_close(add_only, expected)
    grad_a, grad_b = torch.autograd.grad(whole_layer.sum(), (weight_a, weight_b))
    ones = torch.ones(2, 5, 6)
    torch.testing.assert_close(grad_b, (ones.reshape(-1, 6).t() @ (x.detach().reshape(-1, 8) @ weight_a.detach().t()))
                               * 2.0)
    torch.testing.assert_close(grad_a, (ones.reshape(-1, 6) @ weight_b.detach() * 2.0).t() @ x.detach().reshape(-1, 8))


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


@pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None,
                    reason="4-bit layers need CUDA + bitsandbytes")
@pytest.mark.parametrize("architecture", ["tiny_phi3_dir", "tiny_llama_dir"])
def test_whole_layer_on_4bit_weights_equals_the_fused_add_alone(architecture, request, monkeypatch):
    """On the GPU, QLoRA (nf4, bf16 compute): the one-node layer gives the loss and LoRA gradients of
    bitsandbytes' own product + dropout + the fused add, on the same model with the same dropout masks."""
    from transformers import AutoModelForCausalLM

    from lorakit.config import LoraSettings
    from lorakit.model.adapters import attach_lora
    from lorakit.model.quantize import nf4_config

    model = AutoModelForCausalLM.from_pretrained(request.getfixturevalue(architecture), dtype=torch.bfloat16,
                                                 quantization_config=nf4_config(torch.bfloat16), device_map={"": 0})
    model = attach_lora(model, LoraSettings(r=8, alpha=16, dropout=0.1), quantized=True, gradient_checkpointing=True)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.5)
    assert any(type(m).__name__ == "Params4bit" for m in model.parameters())
    input_ids = torch.randint(3, 49152, (2, 24), generator=torch.Generator().manual_seed(0)).cuda()
    results = {}
    adapted = sum(1 for n, _ in model.named_modules() if n.endswith(".lora_A"))
    whole_layer_calls = _count_whole_layer_calls(monkeypatch)
    for whole_layer in (False, True):
        monkeypatch.setenv("LORAKIT_DISABLE", "" if whole_layer else "fused_layer")
        use_fused_lora(model)
        model.zero_grad(set_to_none=True)
        whole_layer_calls.clear()
        results[whole_layer] = _step(model, input_ids)
        # every adapted layer in forward and once more when checkpointing recomputes it
        assert len(whole_layer_calls) == (2 * adapted if whole_layer else 0)
    (logits, loss, grads), (fused_logits, fused_loss, fused_grads) = results[False], results[True]
    torch.testing.assert_close(fused_loss, loss, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(fused_logits, logits, rtol=2e-2, atol=2e-2)
    for name in grads:
        scale = grads[name].abs().max()
        assert scale > 0, name
        torch.testing.assert_close(fused_grads[name] / scale, grads[name] / scale, rtol=0, atol=3e-2, msg=name)
