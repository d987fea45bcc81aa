"""A loaded run's LoRA layers at inference: the frozen product, then the adapter's two products added in place.

Why: on an H100 a decoding step of the Phi-4-mini-shaped LoRA model is bound by the host, which dispatches every op
whatever its size (the device was busy 6.9 of 63 ms at one row; bench/results/serve_batching/
step_profile_h100_session11). peft's LoRA layer at inference runs `result + lora_B(lora_A(dropout(x))) * scaling`:
two `nn.Linear` calls (each `t`, `view`, `mm`, `_unsafe_view` on a [rows, 1, in] input), the scaling multiply and
the add, 10 ops and 4 kernels per adapted layer. Here the branch is `rows @ A^T` and one `addmm_` into the frozen
product's output with the scaling as its `alpha` (folded into the product's epilogue, as cuBLAS and the CPU BLAS
apply it): 6 ops and 2 kernels, on the same weights (no copy, so nothing to go stale when they change). On
Phi-4-mini's 128 adapted layers that is 512 ops and 256 kernels fewer per decoding step (bench/decode_step_ops.py,
bench/results/decode_step_ops/). The frozen layer runs as before (base numerics untouched); the branch is the
same two products, and in bf16 it is rounded once (in the addmm's fp32 accumulator) instead of three times.

peft's module stays in the model and is the one that saves, merges, unloads and switches adapters: only its
`forward` is replaced, per instance, and it hands the call to peft's own whenever the result could differ or
autograd is needed: gradients enabled, training mode (dropout), adapters disabled (`disable_adapter()`), merged,
several or no active adapters, a LoRA variant (DoRA), a bias on lora_B (peft's `lora_bias`), peft's mixed-batch
`adapter_names` or any other argument, an input whose dtype is not the adapter's (LORAKIT_DISABLE=
adapter_in_base_dtype on a bf16 base), autocast on (it runs the products in its dtype, and `addmm_` refuses
mixed dtypes: an fp32 model under bf16 autocast failed; eval's loss runs under autocast, not decoding). A 4-bit base (QLoRA on CUDA) takes the same path, untested here (no GPU).
`LORAKIT_DISABLE=inference_lora` keeps peft's forward (runtime/ablation.py).
"""

from __future__ import annotations

import types

import torch

from lorakit.model.fused_lora import plain_lora_layers
from lorakit.runtime.ablation import enabled

__all__ = ["use_inference_lora"]


def _inference_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """frozen(x) + scaling * (x @ A^T) @ B^T for one plain active adapter under no_grad; else peft's forward."""
    if (args or kwargs or self.training or self.merged or self.disable_adapters or torch.is_grad_enabled()
            or torch._C._is_any_autocast_enabled()):  # the in-place product takes one dtype; autocast mixes them
        return type(self).forward(self, x, *args, **kwargs)
    adapters = self.active_adapters
    lora_a = self.lora_A  # each submodule lookup costs the host ~0.6 us, and this runs 128 times a step
    if (len(adapters) != 1 or adapters[0] not in lora_a or adapters[0] in self.lora_variant
            or self.lora_bias[adapters[0]]):
        return type(self).forward(self, x, *args, **kwargs)
    name = adapters[0]
    weight_a = lora_a[name].weight
    if weight_a.dtype != x.dtype:
        return type(self).forward(self, x, *args, **kwargs)
    result = self.base_layer(x)
    if result._base is not None:  # never write into a view of another tensor
        result = result.clone()
    middle = x.reshape(-1, x.shape[-1]) @ weight_a.t()  # [tokens, r]
    result.view(-1, result.shape[-1]).addmm_(middle, self.lora_B[name].weight.t(), alpha=self.scaling[name])
    return result


def use_inference_lora(model: torch.nn.Module) -> int:
    """Give every plain LoRA linear layer of `model` (nn.Linear or bitsandbytes 4-bit base; DoRA layers keep peft's)
    the inference forward, for a model that only generates (load_run). Returns how many layers were switched; 0
    when `LORAKIT_DISABLE` lists inference_lora."""
    if not enabled("inference_lora"):
        return 0
    layers = plain_lora_layers(model)
    for module in layers:
        module.forward = types.MethodType(_inference_forward, module)
    return len(layers)
