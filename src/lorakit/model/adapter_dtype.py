"""A loaded adapter's weights in the base model's dtype, for inference only.

Why: peft loads LoRA weights in fp32 (it upcasts bf16/fp16 adapters on load, `autocast_adapter_dtype`), so on a
bf16 base every LoRA module casts its input to fp32, runs two fp32 matrix products and casts back: on an H100 a
Phi-4-mini decoding step had ~390 `aten::to` casts and 128 fp32 sgemm kernels (issue 23,
bench/results/serve_batching/step_profile_h100_session11). In the base's dtype a step has none of them. The
answers move by bf16 rounding of the small LoRA product only, as a merged export's do; training keeps its fp32
adapter (the optimizer needs it), and every inference path (chat, eval, serve) loads through the same
inference/generate.py load_run, so they stay consistent with each other.
`LORAKIT_DISABLE=adapter_in_base_dtype` keeps peft's fp32 adapter, to measure what this saves (runtime/ablation.py).
"""

from __future__ import annotations

import torch
from torch import nn

from lorakit.runtime.ablation import enabled

__all__ = ["cast_adapter_for_inference"]


def cast_adapter_for_inference(model: nn.Module, dtype: torch.dtype) -> int:
    """Cast every floating LoRA parameter (`lora_` in its name: A, B, DoRA magnitudes) of `model` to `dtype`, in
    place; returns how many were cast. A no-op for an fp32 base (CPU) and when the ablation switch is off."""
    if not enabled("adapter_in_base_dtype"):
        return 0
    cast = 0
    for name, parameter in model.named_parameters():
        if "lora_" in name and parameter.is_floating_point() and parameter.dtype != dtype:
            parameter.data = parameter.data.to(dtype)
            cast += 1
    return cast
