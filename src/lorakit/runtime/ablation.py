"""Switch single speed optimisations off, to measure each one's contribution inside one benchmark run.

`LORAKIT_DISABLE=fused_lora,split_qkv lorakit train ...` trains as if those optimisations did not exist; the
results are the same numbers either way (each optimisation is tested for equality with what it replaces), only
speed and memory differ. For benchmarks (bench/peer_speed.py --ablate), not a setting users need.
"""

from __future__ import annotations

import os

from lorakit.errors import ConfigError

__all__ = ["OPTIMISATIONS", "enabled"]

OPTIMISATIONS = {
    "fused_lora": "LoRA's scaling and add inside the adapter's matrix product (model/fused_lora.py)",
    "fused_layer": "the whole LoRA layer (frozen product, dropout, LoRA product, add) as one autograd node "
                   "(model/fused_lora.py); off = the fused add alone",
    "split_qkv": "Phi3's q, k, v taken by one split (model/fused_projections.py)",
    "fused_gate_up": "Phi3's SwiGLU read in place from gate_up_proj's output (model/fused_projections.py)",
    "reentrant_checkpoint": "checkpointed layers' first forward pass without autograd (model/checkpointing.py); off "
                            "= non-reentrant checkpoints",
    "host_overlap": "one host-device sync per optimizer step, the next step's batches collated during this step's "
                    "backward pass (training/loop.py)",
    "dequantized_weights": "QLoRA's frozen 4-bit weights kept dequantized where the memory plan has room "
                           "(plan/dequantized.py); off = dequantized in every pass, as bitsandbytes does",
    "decode_without_cudnn": "decoding steps (serve, chat, eval answers) with SDPA's cuDNN attention backend off "
                            "(inference/attention_backend.py); off = PyTorch's own choice (cuDNN on H100)",
    "adapter_in_base_dtype": "a loaded run's LoRA weights cast to the base model's dtype for inference "
                             "(model/adapter_dtype.py); off = peft's fp32 adapter, cast per module per step",
    "inference_lora": "a loaded run's LoRA layers as the frozen product plus two products added in place, the "
                      "scaling in the second's epilogue (model/inference_lora.py); off = peft's LoRA forward",
    "joint_rotary": "a loaded Phi3 run's rotary embedding applied to q and k as one tensor (model/joint_rotary.py); "
                    "off = transformers' apply_rotary_pos_emb, q and k one after the other",
}


def enabled(name: str) -> bool:
    """False when `name` is listed in LORAKIT_DISABLE; an unknown name there is an error, not a silent no-op."""
    assert name in OPTIMISATIONS, name
    disabled = {part.strip() for part in os.environ.get("LORAKIT_DISABLE", "").split(",") if part.strip()}
    unknown = sorted(disabled - set(OPTIMISATIONS))
    if unknown:
        raise ConfigError("LORAKIT_DISABLE (environment variable)",
                          [f"unknown optimisation {name!r}; known: {', '.join(OPTIMISATIONS)}" for name in unknown])
    return name not in disabled
