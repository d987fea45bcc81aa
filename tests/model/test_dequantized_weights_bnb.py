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
