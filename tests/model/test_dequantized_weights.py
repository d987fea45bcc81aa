"""4-bit layers that keep their dequantized weight (model/dequantized_weights.py) compute what bitsandbytes computes,
bit for bit, in the forward pass, the input gradient and the LoRA gradients, dequantizing once instead of every pass.

bitsandbytes is not installed for the tests (it is a GPU extra): a stand-in `Linear4bit` plays it, whose
dequantization is a known function that counts its calls. The real 4-bit equality (bitsandbytes on CPU or CUDA) is
the last test here where bitsandbytes is installed, and bench/dequantized_equality.py on a Phi-4-mini-shaped layer.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch

from lorakit.model import dequantized_weights
from lorakit.model.dequantized_weights import drop_dequantized_weights, keep_dequantized_weights, kept_weight
from lorakit.model.fused_lora import LoraLinear
from lorakit.plan.oom import replan_after_oom

DEQUANTIZED = []  # one entry per dequantization of a stand-in weight


def _dequantize(weight: torch.Tensor, state, dtype: torch.dtype) -> torch.Tensor:
    """The stand-in's '4-bit' format: int8 codes times one fp32 scale per output row."""
    DEQUANTIZED.append(dtype)
    return (weight.view(state.shape).float() * state.scale).to(dtype)


class Linear4bit(torch.nn.Linear):
    """bitsandbytes' Linear4bit as lorakit meets it: the compute dtype settled by the first input, the input cast to
    it, the weight dequantized for every product, the output cast back."""

    def __init__(self, fan_in: int, fan_out: int, quant_dtype: torch.dtype, compute_dtype: torch.dtype):
        super().__init__(fan_in, fan_out, bias=False)
        codes = torch.randint(-7, 8, (fan_out * fan_in, 1), dtype=torch.int8, generator=torch.Generator().manual_seed(1))
        self.weight = torch.nn.Parameter(codes, requires_grad=False)
        scale = torch.rand(fan_out, 1, generator=torch.Generator().manual_seed(2)) / 7
        self.weight.quant_state = types.SimpleNamespace(shape=(fan_out, fan_in), scale=scale, dtype=quant_dtype)
        self.compute_dtype, self.compute_type_is_set = compute_dtype, False

    def set_compute_type(self, x):
        if x.dtype in (torch.float32, torch.bfloat16):
            self.compute_dtype = x.dtype

    def forward(self, x):
        if not self.compute_type_is_set:
            self.set_compute_type(x)
            self.compute_type_is_set = True
        given = x.dtype
        x = x.to(self.compute_dtype)
        return torch.nn.functional.linear(x, _dequantize(self.weight, self.weight.quant_state, x.dtype)).to(given)


Linear4bit.__module__ = "bitsandbytes.nn.modules"  # what model/dequantized_weights.is_4bit_linear looks for


class _Decoder(torch.nn.Module):
    """A model whose decoder layers are one stand-in 4-bit linear layer each."""

    def __init__(self, layers: int, dtype: torch.dtype):
        super().__init__()
        self.layers = torch.nn.ModuleList(Linear4bit(48, 40, dtype, dtype) for _ in range(layers))

    def get_decoder(self):
        return self


@pytest.fixture(autouse=True)
def _stand_in_bitsandbytes(monkeypatch):
    """bitsandbytes.functional.dequantize_4bit (LoraLinear's backward) and the kept weight's dequantization."""
    functional = types.SimpleNamespace(dequantize_4bit=lambda weight, state: _dequantize(weight, state, state.dtype))
    monkeypatch.setitem(sys.modules, "bitsandbytes", types.SimpleNamespace(functional=functional))
    monkeypatch.setitem(sys.modules, "bitsandbytes.functional", functional)
    monkeypatch.setattr(dequantized_weights, "dequantize_as_bitsandbytes",
                        lambda layer, dtype: _dequantize(layer.weight, layer.weight.quant_state, dtype))
    DEQUANTIZED.clear()


def _lora_step(frozen, x, a, b, p: float):
    """Forward and backward of one LoRA layer on `frozen`, twice (two steps); its output and gradients."""
    for _ in range(2):
        x, a, b = (t.detach().requires_grad_() for t in (x, a, b))
        torch.manual_seed(0)  # the same dropout mask
        out = LoraLinear.apply(x, a, b, frozen, 2.0, p)
        out.backward(torch.linspace(-1, 1, out.numel()).view(out.shape).to(out.dtype))
    return out.detach(), x.grad, a.grad, b.grad


@pytest.mark.parametrize("p", [0.0, 0.1])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_kept_weight_gives_the_same_output_and_gradients_bit_for_bit(dtype, p):
    model = _Decoder(2, dtype)
    x = torch.randn(3, 5, 48, dtype=dtype)
    a, b = torch.randn(4, 48, dtype=dtype) / 7, torch.randn(40, 4, dtype=dtype) / 2
    every_pass = _lora_step(model.layers[0], x, a, b, p)
    assert len(DEQUANTIZED) == 4  # two steps: forward and backward each dequantize
    DEQUANTIZED.clear()
    assert keep_dequantized_weights(model, 1) == 1
    kept = _lora_step(model.layers[0], x, a, b, p)
    assert DEQUANTIZED == [dtype]  # once, at the first forward, in the compute dtype
    assert kept_weight(model.layers[0]).dtype == dtype and kept_weight(model.layers[1]) is None
    for with_kept, without in zip(kept, every_pass):
        assert with_kept.dtype == without.dtype and torch.equal(with_kept, without)
    # the unfused path (peft's own layer calls the frozen layer under autograd): the same input gradient
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    model.layers[0](x1).sum().backward()
    drop_dequantized_weights(model)
    model.layers[0](x2).sum().backward()
    assert torch.equal(x1.grad, x2.grad)


def test_a_layer_whose_compute_dtype_differs_from_its_weight_keeps_nothing():
    """fp16 QLoRA under peft's fp32 inputs: bitsandbytes switches the compute dtype to fp32 at the first input,
    where backward's product (dequantized to the weight's fp16, then cast) would round differently."""
    model = _Decoder(1, torch.float16)
    keep_dequantized_weights(model, 1)
    x = torch.randn(2, 48)
    out = model.layers[0](x)
    assert kept_weight(model.layers[0]) is None and "forward" not in vars(model.layers[0])
    assert torch.equal(out, Linear4bit.forward(model.layers[0], x))


def test_out_of_memory_drops_the_kept_weights_first_and_a_resume_keeps_them_dropped():
    model = _Decoder(3, torch.bfloat16)
    keep_dequantized_weights(model, 2)
    model.layers[0](torch.randn(2, 48, dtype=torch.bfloat16))  # builds layer 0's copy; layer 1's is not built yet
    session = types.SimpleNamespace(model=model, device=torch.device("cpu"), offload_activations=False,
                                    config=types.SimpleNamespace(training=types.SimpleNamespace(batch_size=4)))
    state = types.SimpleNamespace(micro_batch_size=None, checkpointed_layers=None, offload_activations=None)
    model.layers[0].gradient_checkpointing = model.layers[1].gradient_checkpointing = True
    model.layers[2].gradient_checkpointing = False
    message = replan_after_oom(session, state, 7)
    assert message == ("out of memory at step 7: dropped the dequantized weights kept for 2 layers (0.0 GiB), "
                       "retrying the step with the same settings")
    assert all(kept_weight(layer) is None and "forward" not in vars(layer) for layer in model.layers)
    assert (state.checkpointed_layers, state.offload_activations) == (2, False)  # a resume re-applies, keeps none
    assert replan_after_oom(session, state, 7) is None  # nothing left to drop; on CPU no re-plan


def test_a_resume_after_the_drop_keeps_no_weight_dequantized(monkeypatch):
    """The resumed session's make_trainable switches the planned layers on again; restore_memory_settings (before
    the first step) switches them off where the saved state records a re-plan, and only there."""
    from lorakit.plan import oom

    monkeypatch.setattr(oom, "_apply", lambda session, state, layers, offload: None)  # the checkpointing: not here
    for recorded, kept in ((None, 2), (2, 0)):
        model = _Decoder(3, torch.bfloat16)
        keep_dequantized_weights(model, 2)  # what the resumed session's plan asks again
        state = types.SimpleNamespace(checkpointed_layers=recorded, offload_activations=False)
        oom.restore_memory_settings(types.SimpleNamespace(model=model), state)
        for layer in model.layers:
            layer(torch.randn(2, 48, dtype=torch.bfloat16))
        assert sum(kept_weight(layer) is not None for layer in model.layers) == kept


def test_the_kept_copy_is_in_no_state_dict_and_is_freed_when_dropped():
    """A checkpoint or adapter save reads state_dict: the bf16 copy must not be in it; and after the drop nothing
    (no closure, no cache) holds the copy, so its memory really goes back."""
    import gc
    import weakref

    model = _Decoder(2, torch.bfloat16)
    keys = set(model.state_dict())
    keep_dequantized_weights(model, 2)
    x = torch.randn(2, 48, dtype=torch.bfloat16, requires_grad=True)
    sum(layer(x).sum() for layer in model.layers).backward()
    copies = [weakref.ref(kept_weight(layer)) for layer in model.layers]
    assert all(copy() is not None for copy in copies) and set(model.state_dict()) == keys
    drop_dequantized_weights(model)
    gc.collect()
    assert all(copy() is None for copy in copies)
