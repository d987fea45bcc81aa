"""LoRA target resolution follows the architecture; partial matches are refused with the mapping."""

import pytest
import torch

from lorakit.config import LoraSettings, ModelConfig
from lorakit.errors import ConfigError
from lorakit.model.adapters import attach_lora, linear_module_names, resolve_target_modules
from lorakit.model.load import load_base_model, resolve_model_source


def _load(directory):
    config = ModelConfig(name=str(directory))
    return load_base_model(resolve_model_source(config), config, torch.device("cpu"), torch.float32)


def test_phi3_all_linear_uses_fused_names(tiny_phi3_dir):
    model = _load(tiny_phi3_dir)
    assert linear_module_names(model) == ["down_proj", "gate_up_proj", "o_proj", "qkv_proj"]
    assert resolve_target_modules(model, "all-linear") == ["down_proj", "gate_up_proj", "o_proj", "qkv_proj"]


def test_llama_all_linear(tiny_llama_dir):
    assert resolve_target_modules(_load(tiny_llama_dir), "all-linear") == [
        "down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def test_guide_targets_on_phi3_are_refused_with_mapping(tiny_phi3_dir):
    model = _load(tiny_phi3_dir)
    with pytest.raises(ConfigError) as caught:
        resolve_target_modules(model, ["q_proj", "k_proj", "v_proj", "o_proj"])
    assert caught.value.problems == [
        "lora.target_modules: q_proj, k_proj, v_proj match no linear layer of this phi3 model, so only o_proj would be adapted.",
        "The model's linear layers are: down_proj, gate_up_proj, o_proj, qkv_proj.",
        "This architecture fuses projections: q_proj -> qkv_proj, k_proj -> qkv_proj, v_proj -> qkv_proj.",
        "Use target_modules: [o_proj, qkv_proj], or 'all-linear'.",
    ]


def test_names_matching_nothing_are_refused(tiny_llama_dir):
    with pytest.raises(ConfigError, match="attn_proj match no linear layer of this llama model, so only nothing"):
        resolve_target_modules(_load(tiny_llama_dir), ["attn_proj"])


def test_lora_trains_adapters_only(tiny_phi3_dir):
    model = attach_lora(_load(tiny_phi3_dir), LoraSettings(r=4, alpha=8, target_modules=["qkv_proj", "gate_up_proj"]),
                        quantized=False, gradient_checkpointing=False)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    assert any("qkv_proj.lora_A" in name for name in trainable) and any("gate_up_proj.lora_B" in name for name in trainable)
    assert not any("o_proj" in name for name in trainable)
