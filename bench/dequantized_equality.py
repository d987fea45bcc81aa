"""Issue 23: a 4-bit layer that keeps its dequantized weight (src/lorakit/model/dequantized_weights.py) computes what
bitsandbytes computes, on the real bitsandbytes, for Phi-4-mini's four linear shapes.

    python bench/dequantized_equality.py [--tokens 8192] [--out bench/results/dequantized_equality.json]
    python bench/dequantized_equality.py --smoke        # CPU, small shapes and few tokens

For each shape (nf4, double quantization, bf16 compute, as lorakit loads QLoRA), under bf16 autocast as lorakit
trains: lorakit's one-node LoRA layer (LoraLinear, dropout 0.1) and the frozen layer alone under autograd (peft's
unfused path), once with bitsandbytes dequantizing in every pass and once with the kept weight. Prints max |diff| of
the output and of the input, lora_A and lora_B gradients (0.0 = bit for bit), and on CUDA the milliseconds of the
pair (the LoRA layer's and the frozen layer's forward + backward) each way, a rough view of what the lever saves per
layer. bitsandbytes below 1,537 rows may use its own fused CUDA kernel, so --tokens stays
above that on CUDA (a training micro-batch of packed rows has thousands).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from lorakit.model.dequantized_weights import (  # noqa: E402
    drop_dequantized_weights,
    keep_dequantized_weights,
    kept_weight,
)
from lorakit.model.fused_lora import LoraLinear  # noqa: E402

# Phi-4-mini's linear layers (in_features, out_features): qkv_proj, o_proj, gate_up_proj, down_proj
PHI4_MINI_LINEARS = {"qkv_proj": (3072, 5120), "o_proj": (3072, 3072), "gate_up_proj": (3072, 16384),
                     "down_proj": (8192, 3072)}
SMOKE_LINEARS = {"qkv_proj": (192, 320), "down_proj": (512, 192)}


class OneLayerModel(torch.nn.Module):
    """A 'decoder' of one 4-bit linear layer, the shape keep_dequantized_weights walks."""

    def __init__(self, layer: torch.nn.Module):
        super().__init__()
        self.layers = torch.nn.ModuleList([layer])

    def get_decoder(self):
        return self


def four_bit_layer(fan_in: int, fan_out: int, device: torch.device) -> torch.nn.Module:
    import bitsandbytes as bnb

    weight = torch.randn(fan_out, fan_in, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16) / fan_in**0.5
    layer = bnb.nn.Linear4bit(fan_in, fan_out, bias=False, compute_dtype=torch.bfloat16, compress_statistics=True,
                              quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, compress_statistics=True, quant_type="nf4")
    return layer.to(device)


def run_pass(layer, x, a, b, device: torch.device) -> dict[str, torch.Tensor]:
    """Output and gradients of the one-node LoRA layer, and of the frozen layer alone under autograd."""
    x, a, b = (t.detach().requires_grad_() for t in (x, a, b))
    with torch.autocast(device.type, dtype=torch.bfloat16):
        torch.manual_seed(0)  # the same dropout mask
        out = LoraLinear.apply(x, a, b, layer, 2.0, 0.1)
        out.backward(torch.ones_like(out))
        plain_x = x.detach().requires_grad_()
        plain = layer(plain_x)
        plain.backward(torch.ones_like(plain))
    return {"lora_output": out.detach(), "lora_grad_input": x.grad, "lora_grad_A": a.grad, "lora_grad_B": b.grad,
            "frozen_output": plain.detach(), "frozen_grad_input": plain_x.grad}


def milliseconds(layer, x, a, b, device: torch.device, repeats: int = 10) -> float | None:
    if device.type != "cuda":
        return None
    run_pass(layer, x, a, b, device)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        run_pass(layer, x, a, b, device)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats * 1000


def compare(name: str, fan_in: int, fan_out: int, tokens: int, device: torch.device) -> dict:
    layer = four_bit_layer(fan_in, fan_out, device)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(1, tokens, fan_in, generator=generator).to(device, torch.bfloat16)
    a = (torch.randn(16, fan_in, generator=generator) / fan_in**0.5).to(device, torch.bfloat16)
    b = (torch.randn(fan_out, 16, generator=generator) / 4).to(device, torch.bfloat16)
    every_pass = run_pass(layer, x, a, b, device)
    ms_every_pass = milliseconds(layer, x, a, b, device)
    model = OneLayerModel(layer)
    keep_dequantized_weights(model, 1)
    kept = run_pass(layer, x, a, b, device)
    assert kept_weight(layer) is not None, "the layer did not keep its weight"
    ms_kept = milliseconds(layer, x, a, b, device)
    drop_dequantized_weights(model)
    diffs = {key: (kept[key].float() - every_pass[key].float()).abs().max().item() for key in kept}
    assert all(kept[key].dtype == every_pass[key].dtype for key in kept)
    return {"layer": name, "in": fan_in, "out": fan_out, "tokens": tokens, "max_abs_diff": diffs,
            "bit_for_bit": all(value == 0.0 for value in diffs.values()),
            "ms_forward_backward_bitsandbytes": ms_every_pass, "ms_forward_backward_kept": ms_kept}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--smoke", action="store_true", help="CPU, small shapes, 64 tokens")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    import bitsandbytes

    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    shapes, tokens = (SMOKE_LINEARS, 64) if args.smoke else (PHI4_MINI_LINEARS, args.tokens)
    rows = [compare(name, fan_in, fan_out, tokens, device) for name, (fan_in, fan_out) in shapes.items()]
    for row in rows:
        print(json.dumps(row))
    report = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "bitsandbytes": bitsandbytes.__version__, "rows": rows,
              "all_bit_for_bit": all(row["bit_for_bit"] for row in rows)}
    print(f"all bit for bit: {report['all_bit_for_bit']} ({report['device']}, bitsandbytes {bitsandbytes.__version__})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
