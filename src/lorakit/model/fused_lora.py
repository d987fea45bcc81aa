"""LoRA's branch added to the frozen layer's output by one matrix product, not four memory-bound passes.

peft computes `result + lora_B(lora_A(dropout(x))) * scaling`: the [tokens, out] product of lora_B is written,
read and written again by the scaling, then read with the base output and written once more by the add (and
peft's 4-bit layer first clones the base output). The scaling is folded into lora_B's small [out, r] weight
and the add into the product's epilogue (`addmm_`, in place on the base output), and the backward pass does
the same in reverse: on the H200 profile of Phi-4-mini these passes were 7-11% of a step's GPU time
(bench/results/peer_speed_run1). Dropout stays peft's own module, so the random masks, and with them resume,
are unchanged; only the arithmetic after it is fused.
"""

from __future__ import annotations

import types

import torch

from lorakit.runtime.ablation import enabled

__all__ = ["use_fused_lora", "FusedLoraAdd"]


class FusedLoraAdd(torch.autograd.Function):
    """base += (dropped @ A^T) @ (scaling * B)^T, in place; the gradients of A, B and `dropped`."""

    @staticmethod
    def forward(ctx, base, dropped, weight_a, weight_b, scaling):
        dtype = base.dtype
        a = weight_a.to(dtype)
        scaled_b = (weight_b * scaling).to(dtype)
        rows = dropped.reshape(-1, dropped.shape[-1]).to(dtype)
        middle = rows @ a.t()  # [tokens, r]
        base.view(-1, base.shape[-1]).addmm_(middle, scaled_b.t())
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


def _fused_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """peft's forward for one plain LoRA adapter, with the fused add; anything else goes to peft's own."""
    adapters = self.active_adapters
    plain = (len(adapters) == 1 and adapters[0] in self.lora_A and adapters[0] not in self.lora_variant
             and not self.disable_adapters and not self.merged and "adapter_names" not in kwargs)
    if not plain:
        return type(self).forward(self, x, *args, **kwargs)
    self._check_forward_args(x, *args, **kwargs)
    name = adapters[0]
    result = self.base_layer(x, *args, **kwargs)
    if result._base is not None:  # never write into a view of another tensor
        result = result.clone()
    dropped = self.lora_dropout[name](x)
    return FusedLoraAdd.apply(result, dropped, self.lora_A[name].weight, self.lora_B[name].weight,
                              float(self.scaling[name]))


def use_fused_lora(model) -> int:
    """Give every plain LoRA linear layer (bf16/fp32 or bitsandbytes 4-bit base) the fused forward; DoRA layers
    keep peft's. Returns how many layers were switched."""
    from peft.tuners.lora.layer import Linear

    if not enabled("fused_lora"):
        return 0
    classes: tuple[type, ...] = (Linear,)
    try:
        from peft.tuners.lora.bnb import Linear4bit

        classes += (Linear4bit,)
    except ImportError:  # bitsandbytes not installed: no 4-bit layers either
        pass
    switched = 0
    for module in model.modules():
        if type(module) in classes and not any(module.use_dora.values()):
            module.forward = types.MethodType(_fused_forward, module)
            switched += 1
    return switched
