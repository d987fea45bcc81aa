"""A loaded base model -> the model lorakit trains: fused kernels and projections, LoRA (its add fused), isolated packed
attention, and the planned gradient checkpointing, in that order (kernels patch the base modules that LoRA then wraps)."""

from __future__ import annotations

import torch

from lorakit.config import RunConfig
from lorakit.model.adapters import attach_lora
from lorakit.model.attention import use_varlen_attention
from lorakit.model.checkpointing import apply_checkpointing, reentrant_checkpoints
from lorakit.model.dequantized_weights import keep_dequantized_weights
from lorakit.model.fused_lora import use_fused_lora
from lorakit.model.fused_projections import use_fused_projections
from lorakit.model.kernels import apply_fused_kernels
from lorakit.model.tiled_mlp import use_tiled_mlp

__all__ = ["make_trainable", "skip_fp32_input_copies", "add_neftune_noise"]


def skip_fp32_input_copies(model) -> None:
    """Feed LoRA layers their bf16/fp16 input as is. peft copies every adapted layer's input to the fp32 of the
    adapter weights; lorakit trains under autocast, which runs the LoRA matmuls in bf16 anyway, so the copy
    (6 bytes per input element, every layer, every step) buys nothing (+11% tokens/s on the H100 benchmark)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.cast_input_dtype_enabled = False


def add_neftune_noise(model, alpha: float) -> None:
    """NEFTune (arXiv:2310.05914): noisy input embeddings in training mode only, so eval, chat and the saved adapter
    are unaffected. transformers' hook draws from torch's RNG, which checkpoints save, so resume stays exact."""
    from transformers.integrations.neftune import neftune_post_forward_hook

    embeddings = model.get_input_embeddings()
    embeddings.neftune_noise_alpha = alpha
    embeddings.register_forward_hook(neftune_post_forward_hook)


def make_trainable(model, config: RunConfig, *, device: torch.device, quantized: bool,
                   checkpointed_layers: int, offload_activations: bool = False, sharded: bool = False,
                   tiled_mlp: bool = False, dequantized_layers: int = 0):
    """Wrap `model` for training; returns the peft model. `checkpointed_layers`: how many of the first decoder
    layers are checkpointed (0 = none); `sharded`: fsdp will shard it (training/sharding.py); `tiled_mlp`: the
    planner's MLPs in sequence chunks (model/tiled_mlp.py); `dequantized_layers`: the first n decoder layers' 4-bit
    weights kept dequantized (model/dequantized_weights.py)."""
    apply_fused_kernels(model, device)
    use_fused_projections(model, device)  # after liger, whose SwiGLU forward it replaces
    model = attach_lora(model, config.lora, quantized=quantized, gradient_checkpointing=False)
    if model.get_input_embeddings().weight.dtype != torch.float32:  # trained under autocast (training/loop.py)
        skip_fp32_input_copies(model)
    use_fused_lora(model)
    keep_dequantized_weights(model, dequantized_layers)
    if config.training.packing or config.training.shares_prefixes:
        use_varlen_attention(model)  # shared prefixes: training/session.takes_shared_prefixes warns if it did not take
    if tiled_mlp:  # after the fused projections and LoRA: it runs the MLP forward they leave
        use_tiled_mlp(model, True)
    if config.training.neftune_noise_alpha is not None:
        add_neftune_noise(model, config.training.neftune_noise_alpha)
    apply_checkpointing(model, checkpointed_layers, reentrant=reentrant_checkpoints(offload_activations, sharded))
    return model
