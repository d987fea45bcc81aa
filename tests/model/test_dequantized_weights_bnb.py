"""The kept dequantized weight against the real bitsandbytes (where it is installed; it is a GPU extra, so CI skips
this): nf4 with double quantization, bf16 compute under autocast, as lorakit trains QLoRA. On CPU bitsandbytes always
dequantizes then calls F.linear; on CUDA it does for more than 1,536 rows (bench/dequantized_equality.py runs
Phi-4-mini's shapes at 8,192 tokens)."""

from __future__ import annotations

import pytest
import torch

from lorakit.model.dequantized_weights import keep_dequantized_weights, kept_weight
from lorakit.model.fused_lora import LoraLinear

bnb = pytest.importorskip("bitsandbytes")


class _OneLayer(torch.nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layers = torch.nn.ModuleList([layer])

    def get_decoder(self):
        return self


def _step(layer, x, a, b, device):
    x, a, b = (t.detach().requires_grad_() for t in (x, a, b))
    with torch.autocast(device.type, dtype=torch.bfloat16):
        torch.manual_seed(0)
        out = LoraLinear.apply(x, a, b, layer, 2.0, 0.1)
        out.backward(torch.linspace(-1, 1, out.numel(), device=device).view(out.shape).to(out.dtype))
    return out.detach(), x.grad, a.grad, b.grad


def test_kept_weight_equals_bitsandbytes_4bit_bit_for_bit():
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokens = 2048 if device.type == "cuda" else 40  # CUDA: past the rows where bitsandbytes may use its own kernel
    weight = torch.randn(96, 128, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16) / 11
    layer = bnb.nn.Linear4bit(128, 96, bias=False, compute_dtype=torch.bfloat16, compress_statistics=True,
                              quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, compress_statistics=True, quant_type="nf4")
    layer = layer.to(device)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(1, tokens, 128, generator=generator).to(device, torch.bfloat16)
    a, b = torch.randn(8, 128, generator=generator) / 11, torch.randn(96, 8, generator=generator) / 3
    a, b = a.to(device, torch.bfloat16), b.to(device, torch.bfloat16)
    every_pass = _step(layer, x, a, b, device)
    keep_dequantized_weights(_OneLayer(layer), 1)
    kept = _step(layer, x, a, b, device)
    assert kept_weight(layer) is not None and kept_weight(layer).dtype == torch.bfloat16
    for with_kept, without in zip(kept, every_pass):
        assert torch.equal(with_kept, without)


@pytest.mark.parametrize("architecture", ["tiny_llama_dir", "tiny_phi3_dir"])
def test_a_qlora_step_with_kept_weights_is_the_same_step(architecture, request):
    """A whole QLoRA model (peft's 4-bit LoRA layers, lorakit's one-node layers, the first layer checkpointed and
    recomputed, dropout 0.1, bf16 autocast): the same loss and LoRA gradients with the first two layers' weights kept."""
    from transformers import AutoModelForCausalLM

    from lorakit.config import LoraSettings
    from lorakit.model.adapters import attach_lora
    from lorakit.model.checkpointing import apply_checkpointing
    from lorakit.model.fused_lora import use_fused_lora
    from lorakit.model.quantize import nf4_config
    from lorakit.model.trainable import skip_fp32_input_copies

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForCausalLM.from_pretrained(request.getfixturevalue(architecture), dtype=torch.bfloat16,
                                                 quantization_config=nf4_config(torch.bfloat16),
                                                 device_map={"": device.index or 0} if device.type == "cuda" else {"": "cpu"})
    model = attach_lora(model, LoraSettings(r=8, alpha=16, dropout=0.1), quantized=True, gradient_checkpointing=False)
    skip_fp32_input_copies(model)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.5)
    use_fused_lora(model)
    apply_checkpointing(model, 1, reentrant=True)
    tokens = 2048 if device.type == "cuda" else 40
    input_ids = torch.randint(3, 49152, (1, tokens), generator=torch.Generator().manual_seed(0)).to(device)

    def step():
        model.zero_grad(set_to_none=True)
        torch.manual_seed(123)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    model.train()
    loss, grads = step()
    assert keep_dequantized_weights(model, 2) > 0
    kept_loss, kept_grads = step()
    assert torch.equal(kept_loss, loss)
    assert grads.keys() == kept_grads.keys() and all(torch.equal(kept_grads[n], grads[n]) for n in grads)
