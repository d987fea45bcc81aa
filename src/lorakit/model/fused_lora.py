"""LoRA's branch added to the frozen layer's output by one matrix product, not four memory-bound passes.

peft computes `result + lora_B(lora_A(dropout(x))) * scaling`: the [tokens, out] product of lora_B is written,
read and written again by the scaling, then read with the base output and written once more by the add (and
peft's 4-bit layer first clones the base output). The scaling is folded into lora_B's small [out, r] weight
and the add into the product's epilogue (`addmm_`, in place on the base output), and the backward pass does
the same in reverse: on the H200 profile of Phi-4-mini these passes were 7-11% of a step's GPU time
(bench/results/peer_speed_run1).

Where the frozen layer is a plain `nn.Linear` or bitsandbytes' 4-bit one, the whole adapted layer (frozen
product, dropout, LoRA product and add) is one autograd node (`LoraLinear`): one Python call and one backward
node per layer instead of peft's, bitsandbytes', dropout's and the add's. On the emulated 8 GB card (QLoRA, 31 of
32 layers recomputed) the GPU sat idle ~90 ms per step waiting for the host (bench/results/peer_speed_levers/
run5_check). Without dropout the LoRA branch's input gradient is added by the frozen product's own `addmm_`.
The dropout masks are `torch.native_dropout`'s, the kernel `nn.Dropout` runs, from the same random stream, so
the masks, and with them resume, are those of peft's module.
"""

from __future__ import annotations

import types

import torch

from lorakit.model.dequantized_weights import dequantize_as_bitsandbytes, is_4bit_linear, kept_weight
from lorakit.runtime.ablation import enabled

__all__ = ["use_fused_lora", "plain_lora_layers", "FusedLoraAdd", "LoraLinear"]


def _add_lora_product(base, dropped, weight_a, weight_b, scaling: float):
    """base += (dropped @ A^T) @ (scaling * B)^T in base's dtype, in place; returns what backward needs.

    Autocast is off here: the in-place product takes one dtype, and under fp16 QLoRA the frozen layer's output
    is fp32 (peft's kbit preparation upcasts the layer inputs, and bitsandbytes returns its input's dtype) while
    autocast would run the first product in fp16."""
    with torch.autocast(base.device.type, enabled=False):
        dtype = base.dtype
        a = weight_a.to(dtype)
        scaled_b = (weight_b * scaling).to(dtype)
        rows = dropped.reshape(-1, dropped.shape[-1]).to(dtype)
        middle = rows @ a.t()  # [tokens, r]
        base.view(-1, base.shape[-1]).addmm_(middle, scaled_b.t())
    return rows, middle, a, scaled_b


class FusedLoraAdd(torch.autograd.Function):
    """base += (dropped @ A^T) @ (scaling * B)^T, in place; the gradients of A, B and `dropped`."""

    @staticmethod
    def forward(ctx, base, dropped, weight_a, weight_b, scaling):
        rows, middle, a, scaled_b = _add_lora_product(base, dropped, weight_a, weight_b, scaling)
        ctx.mark_dirty(base)
        ctx.save_for_backward(rows, middle, a, scaled_b)
        ctx.scaling, ctx.input_dtype = scaling, dropped.dtype
        ctx.param_dtypes = (weight_a.dtype, weight_b.dtype)
        ctx.input_shape = dropped.shape
        return base

    @staticmethod
    def backward(ctx, grad_out):
        rows, middle, a, scaled_b = ctx.saved_tensors
        grad = grad_out.reshape(-1, grad_out.shape[-1]).to(a.dtype)
        grad_middle = grad @ scaled_b  # [tokens, r]
        grad_dropped = grad_weight_a = grad_weight_b = None
        if ctx.needs_input_grad[1]:
            grad_dropped = (grad_middle @ a).to(ctx.input_dtype).view(ctx.input_shape)
        if ctx.needs_input_grad[2]:
            grad_weight_a = (grad_middle.t() @ rows).to(ctx.param_dtypes[0])
        if ctx.needs_input_grad[3]:
            grad_weight_b = ((grad.t() @ middle) * ctx.scaling).to(ctx.param_dtypes[1])
        return grad_out, grad_dropped, grad_weight_a, grad_weight_b, None


class LoraLinear(torch.autograd.Function):
    """frozen(x) + (dropout(x) @ A^T) @ (scaling * B)^T; gradients of x, A and B. `frozen` is an `nn.Linear` or
    bitsandbytes' `Linear4bit` whose weight (and bias) take no gradient; `p` is the dropout probability (0: none)."""

    @staticmethod
    def forward(ctx, x, weight_a, weight_b, frozen, scaling, p):
        # autograd is off inside forward: no graph, and bitsandbytes takes its no-grad path (or the kept weight's)
        result = frozen(x)
        if result._base is not None:  # never write into a view of another tensor
            result = result.clone()
        dropped, mask = torch.native_dropout(x, p, True) if p > 0 else (x, None)
        rows, middle, a, scaled_b = _add_lora_product(result, dropped, weight_a, weight_b, scaling)
        ctx.save_for_backward(rows, middle, a, scaled_b, mask)
        ctx.frozen, ctx.scaling, ctx.keep = frozen, scaling, 1 - p
        ctx.input_dtype, ctx.input_shape = x.dtype, x.shape
        ctx.param_dtypes = (weight_a.dtype, weight_b.dtype)
        return result

    @staticmethod
    def backward(ctx, grad_out):
        rows, middle, a, scaled_b, mask = ctx.saved_tensors
        grad = grad_out.reshape(-1, grad_out.shape[-1]).to(a.dtype)
        grad_middle = grad @ scaled_b  # [tokens, r]
        grad_x = grad_weight_a = grad_weight_b = None
        if ctx.needs_input_grad[0]:
            grad_x = grad @ _frozen_weight(ctx.frozen, a.dtype)  # [tokens, in]
            if mask is None:
                grad_x.addmm_(grad_middle, a)
            else:  # dropout's own backward kernel: addcmul_ with the bool mask is not vectorized (2x slower, H200)
                grad_x += torch.ops.aten.native_dropout_backward(grad_middle @ a, mask.reshape(grad_x.shape),
                                                                 1 / ctx.keep)
            grad_x = grad_x.to(ctx.input_dtype).view(ctx.input_shape)
        if ctx.needs_input_grad[1]:
            grad_weight_a = (grad_middle.t() @ rows).to(ctx.param_dtypes[0])
        if ctx.needs_input_grad[2]:
            grad_weight_b = ((grad.t() @ middle) * ctx.scaling).to(ctx.param_dtypes[1])
        return grad_x, grad_weight_a, grad_weight_b, None, None, None


def _frozen_weight(frozen: torch.nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """The frozen layer's [out, in] weight in `dtype` (a 4-bit one dequantized, as bitsandbytes' backward does, or
    the dequantized copy it keeps where the memory plan had room: model/dequantized_weights.py)."""
    quant_state = getattr(frozen.weight, "quant_state", None)
    if quant_state is None:
        return frozen.weight.to(dtype)
    kept = kept_weight(frozen)
    if kept is not None:  # kept in quant_state.dtype, as the dequantization below: the same values
        return kept.to(dtype)
    return dequantize_as_bitsandbytes(frozen, dtype)


def _frozen_plain_linear(frozen: torch.nn.Module) -> bool:
    """A frozen nn.Linear or bitsandbytes 4-bit layer without trainable bias. Exactly those classes: backward
    recomputes the input gradient from the weight as a plain `x @ W^T + b` layer has it."""
    linear = type(frozen) is torch.nn.Linear or is_4bit_linear(frozen)
    return linear and not frozen.weight.requires_grad and (frozen.bias is None or not frozen.bias.requires_grad)


def _fused_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """peft's forward for one plain LoRA adapter, with the fused add; anything else goes to peft's own."""
    adapters = self.active_adapters
    plain = (len(adapters) == 1 and adapters[0] in self.lora_A and adapters[0] not in self.lora_variant
             and not self.disable_adapters and not self.merged and "adapter_names" not in kwargs)
    if not plain:
        return type(self).forward(self, x, *args, **kwargs)
    self._check_forward_args(x, *args, **kwargs)
    name = adapters[0]
    dropout = self.lora_dropout[name]
    if (self.lorakit_fused_layer and not args and not kwargs
            and type(dropout) in (torch.nn.Dropout, torch.nn.Identity)):
        p = dropout.p if isinstance(dropout, torch.nn.Dropout) and dropout.training else 0.0
        return LoraLinear.apply(x, self.lora_A[name].weight, self.lora_B[name].weight, self.base_layer,
                                float(self.scaling[name]), p)
    result = self.base_layer(x, *args, **kwargs)
    if result._base is not None:  # never write into a view of another tensor
        result = result.clone()
    dropped = dropout(x)
    return FusedLoraAdd.apply(result, dropped, self.lora_A[name].weight, self.lora_B[name].weight,
                              float(self.scaling[name]))


def use_fused_lora(model) -> int:
    """Give every plain LoRA linear layer (bf16/fp32 or bitsandbytes 4-bit base) the fused forward; DoRA layers
    keep peft's. Returns how many layers were switched. Calling it again re-reads LORAKIT_DISABLE."""
    if not enabled("fused_lora"):
        return 0
    switched, whole_layer = 0, enabled("fused_layer")
    for module in plain_lora_layers(model):
        module.forward = types.MethodType(_fused_forward, module)
        module.lorakit_fused_layer = whole_layer and _frozen_plain_linear(module.base_layer)  # (decided once)
        switched += 1
    return switched


def plain_lora_layers(model):
    """peft's LoRA linear layers of `model` whose base is an nn.Linear or bitsandbytes' 4-bit one and that use no
    DoRA: the layers whose forward lorakit may replace (training's fused layer, inference's addmm_)."""
    from peft.tuners.lora.layer import Linear

    classes: tuple[type, ...] = (Linear,)
    try:
        from peft.tuners.lora.bnb import Linear4bit

        classes += (Linear4bit,)
    except ImportError:  # bitsandbytes not installed: no 4-bit layers either
        pass
    return [module for module in model.modules() if type(module) in classes and not any(module.use_dora.values())]
