"""LoRA adapters: resolve target modules against the real architecture, then wrap with peft.

peft matches `target_modules` by suffix and silently ignores names that match nothing, so the guide's
[q_proj, k_proj, v_proj, o_proj] on Phi-4-mini (which fuses qkv_proj) adapts only o_proj. We refuse that.
"""

from __future__ import annotations

import json
import math
import re
from typing import TYPE_CHECKING

import torch
from torch import nn

from lorakit.config import LoraSettings
from lorakit.errors import ConfigError
from lorakit.model.gguf_cache import EMBEDDED_HUB_ID

if TYPE_CHECKING:
    from lorakit.model.load import ModelSource

__all__ = ["FUSED_PROJECTIONS", "variant_identity", "linear_module_names", "resolve_target_modules", "attach_lora", "public_model_name",
           "name_adapter_base", "parameter_count", "trainable_parameter_count"]

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
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


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


def public_model_name(source: ModelSource) -> str:
    """The base model's name as `adapter_config.json` should carry it: a name that means the same model on
    another machine (a Hub id where there is one), never a path into this machine's cache.

    Embedded alias -> its Hub id; Hub model -> its id; local folder or GGUF -> the `_name_or_path` of its
    config.json if that is a Hub id, else the folder's (or file's) own name. The local path stays in the manifest.
    """
    if source.kind == "embedded":
        return EMBEDDED_HUB_ID
    if source.kind == "hub":
        return source.model_id
    config = source.directory / "config.json"
    recorded = json.loads(config.read_text()).get("_name_or_path") if config.is_file() else None
    if isinstance(recorded, str) and _HUB_ID.match(recorded):
        return recorded
    name = source.model_id.rstrip("/").rsplit("/", 1)[-1]
    return name.removesuffix(".gguf")


def name_adapter_base(model, name: str) -> None:
    """Record `name` as the base model of every adapter on `model`; each later save writes it (peft fills in
    the loaded folder's absolute path otherwise). Saves must pass save_embedding_layers=False, or peft looks
    `name` up on the Hub."""
    for config in model.peft_config.values():
        config.base_model_name_or_path = name


def parameter_count(parameter: torch.Tensor) -> int:
    """How many weights a parameter holds: bitsandbytes' 4-bit parameters pack two into each uint8 element,
    so their `numel()` is half the real count; their quant_state keeps the unpacked shape."""
    quant_state = getattr(parameter, "quant_state", None)
    if quant_state is not None and getattr(quant_state, "shape", None) is not None:
        return math.prod(quant_state.shape)
    return parameter.numel()


def trainable_parameter_count(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) weights, 4-bit ones counted unpacked (Phi-4-mini: 3.8B, not its packed 2.2B)."""
    trainable = sum(parameter_count(p) for p in model.parameters() if p.requires_grad)
    total = sum(parameter_count(p) for p in model.parameters())
    return trainable, total


def lora_state_dict(model: nn.Module, weights: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The adapter's tensors as peft saves them; `weights` (parameter name -> tensor) instead of the model's
    own, e.g. the full weights gathered from an FSDP-sharded model (training/sharding.py)."""
    from peft import get_peft_model_state_dict

    # save_embedding_layers=False: lorakit never adapts embeddings, and peft's "auto" would look the base model's
    # public name up on the Hub at every save to compare vocabulary sizes.
    state = get_peft_model_state_dict(model, state_dict=weights, save_embedding_layers=False)
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


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
