"""bitsandbytes 4-bit layers that keep their weight dequantized for the run, where the memory plan has room for it
(plan/dequantized.py decides how many decoder layers).

bitsandbytes 0.50's 4-bit product (`gemm_4bit`), for more than 1,536 rows on CUDA and always on CPU, dequantizes the
nf4 weight into the input's dtype and calls `F.linear`; its backward (and LoraLinear's, model/fused_lora.py)
dequantizes it once more. The weights are frozen, so the values are the same every step: a layer that keeps them
computes `F.linear` with the kept tensor, the very numbers bitsandbytes computes, without the dequantization. (Below
1,537 rows bitsandbytes may run its own fused kernel on CUDA, whose rounding differs; a training micro-batch of
packed rows has thousands.) The forward below is bitsandbytes' `Linear4bit.forward` with that one change, so the
dtype conversions are its own. The copy is built at the layer's first forward, once bitsandbytes has settled the
compute dtype from the input, and only where that dtype is the weight's own (so backward's product, which
dequantizes to the weight's dtype, is unchanged too). The 4-bit weight stays: saving, merging and exporting the
adapter read it, and the copy is a plain attribute, in no state_dict.
"""

from __future__ import annotations

import types

import torch

from lorakit.model.checkpointing import decoder_layers

__all__ = ["is_4bit_linear", "keep_dequantized_weights", "drop_dequantized_weights", "kept_weight",
           "dequantize_as_bitsandbytes"]

_KEEP = "lorakit_keeps_dequantized"  # the plan asked this layer to keep its weight dequantized
_KEPT = "lorakit_dequantized_weight"  # the kept tensor, once built


def is_4bit_linear(module: torch.nn.Module) -> bool:
    """bitsandbytes' Linear4bit itself (by name: bitsandbytes is optional)."""
    return type(module).__name__ == "Linear4bit" and type(module).__module__.startswith("bitsandbytes")


def dequantize_as_bitsandbytes(layer: torch.nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """The layer's [out, in] weight dequantized by bitsandbytes itself (the nested absmax rebuilt in fp32, then the 4-bit
    weight in the quant state's dtype: what its `gemm_4bit` multiplies by), in `dtype`."""
    import bitsandbytes.functional as bnb_functional

    return bnb_functional.dequantize_4bit(layer.weight.view(-1, 1), layer.weight.quant_state).to(dtype)


def kept_weight(layer: torch.nn.Module) -> torch.Tensor | None:
    """The layer's kept dequantized weight, or None (not kept, or not built yet)."""
    return getattr(layer, _KEPT, None)


def _forward_with_kept_weight(self, x: torch.Tensor) -> torch.Tensor:
    """bitsandbytes' Linear4bit.forward (0.50) with the kept weight in place of its dequantizing product."""
    if not self.compute_type_is_set:
        self.set_compute_type(x)
        self.compute_type_is_set = True
    given, input_dtype = x, x.dtype
    if self.compute_dtype is not None:
        x = x.to(self.compute_dtype)
    weight = kept_weight(self)
    if weight is None:
        if x.dtype != self.weight.quant_state.dtype:  # not kept: backward's product would round differently
            del self.forward
            delattr(self, _KEEP)
            return self.forward(given)
        with torch.no_grad():
            weight = dequantize_as_bitsandbytes(self, x.dtype)
        setattr(self, _KEPT, weight)
    bias = self.bias
    if bias is not None:
        if bias.dtype != x.dtype:
            bias.data = bias.data.to(x.dtype)
        bias = bias.to(self.compute_dtype)
    return torch.nn.functional.linear(x, weight, bias).to(input_dtype)


def keep_dequantized_weights(model, layers: int) -> int:
    """Have the 4-bit linear layers of the first `layers` decoder layers keep their dequantized weight (built at
    each one's first forward). Returns how many linear layers were switched."""
    switched = 0
    for decoder_layer in decoder_layers(model)[:layers]:
        for module in decoder_layer.modules():
            if is_4bit_linear(module) and not hasattr(module, _KEEP):
                module.forward = types.MethodType(_forward_with_kept_weight, module)
                setattr(module, _KEEP, True)
                switched += 1
    return switched


def drop_dequantized_weights(model) -> tuple[int, int]:
    """Free every kept weight and give the layers back bitsandbytes' own forward (the first thing an out-of-memory
    re-plan gives up, plan/oom.py). Returns (decoder layers that kept any, bytes freed)."""
    layers, freed = 0, 0
    for decoder_layer in decoder_layers(model):
        kept_here = False
        for module in decoder_layer.modules():
            if hasattr(module, _KEEP):
                weight = kept_weight(module)
                freed += 0 if weight is None else weight.numel() * weight.element_size()
                for name in ("forward", _KEEP, _KEPT):
                    if name in vars(module):
                        delattr(module, name)
                kept_here = True
        layers += kept_here
    return layers, freed
