"""LoRA adapters: resolve target modules against the real architecture, then wrap with peft.

peft matches `target_modules` by suffix and silently ignores names that match nothing, so the guide's
[q_proj, k_proj, v_proj, o_proj] on Phi-4-mini (which fuses qkv_proj) adapts only o_proj. We refuse that.
"""

from __future__ import annotations

import torch
from torch import nn

from lorakit.config import LoraSettings
from lorakit.errors import ConfigError

__all__ = ["FUSED_PROJECTIONS", "variant_identity", "linear_module_names", "resolve_target_modules", "attach_lora"]

# Separate projection name -> the fused module that contains it (Phi-3/Phi-4 style architectures).
FUSED_PROJECTIONS = {
    "q_proj": "qkv_proj",
    "k_proj": "qkv_proj",
    "v_proj": "qkv_proj",
    "gate_proj": "gate_up_proj",
    "up_proj": "gate_up_proj",
}
# Output heads are never adapted: tied to the embeddings in most small models, and huge in vocabulary size.
_EXCLUDED = {"lm_head", "embed_out", "output"}


def linear_module_names(model: nn.Module) -> list[str]:
    """Distinct leaf names of the model's linear layers (bitsandbytes 4-bit layers subclass nn.Linear)."""
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    return sorted(names - _EXCLUDED)


def resolve_target_modules(model: nn.Module, requested: list[str] | str) -> list[str]:
    """'all-linear' -> every linear layer; a list must match the architecture exactly, name by name."""
    available = linear_module_names(model)
    if requested == "all-linear":
        return available
    missing = [name for name in requested if name not in available]
    if not missing:
        return list(requested)
    mapping = {name: FUSED_PROJECTIONS[name] for name in missing if FUSED_PROJECTIONS.get(name) in available}
    suggestion = sorted({mapping.get(name, name) for name in requested if mapping.get(name, name) in available})
    architecture = getattr(model.config, "model_type", "this model")
    lines = [
        f"lora.target_modules: {', '.join(missing)} match no linear layer of this {architecture} model, "
        f"so only {', '.join(n for n in requested if n in available) or 'nothing'} would be adapted.",
        f"The model's linear layers are: {', '.join(available)}.",
    ]
    if mapping:
        lines.append("This architecture fuses projections: " + ", ".join(f"{k} -> {v}" for k, v in mapping.items()) + ".")
    if suggestion:
        lines.append(f"Use target_modules: [{', '.join(suggestion)}], or 'all-linear'.")
    raise ConfigError("lora.target_modules", lines)


def attach_lora(model: nn.Module, settings: LoraSettings, *, quantized: bool, gradient_checkpointing: bool):
    """Wrap the base model with trainable LoRA layers; base weights are frozen."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    targets = resolve_target_modules(model, settings.target_modules)
    if quantized and model.get_input_embeddings().weight.dtype == torch.float16:
        # fp16 compute: peft's QLoRA recipe upcasts embeddings and norms to fp32 for stability. With bf16 we
        # skip it: the fp32 copy doubles Phi-4-mini's 0.6B-parameter tied embedding and turns the LM head
        # into an fp32 matmul (get_peft_model freezes the base weights either way).
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    peft_config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
        use_dora=settings.use_dora,
        use_rslora=settings.use_rslora,
    )
    return get_peft_model(model, peft_config)


def trainable_parameter_count(model: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}


def variant_identity(config) -> dict:
    """The LoRA variants and training tricks a run uses, for the resume check; only those switched on, so runs
    made before the variants existed resume unchanged."""
    chosen = {
        "lora_use_dora": config.lora.use_dora or None,
        "lora_use_rslora": config.lora.use_rslora or None,
        "loraplus_lr_ratio": config.training.loraplus_lr_ratio,
        "neftune_noise_alpha": config.training.neftune_noise_alpha,
    }
    return {key: value for key, value in chosen.items() if value is not None}
