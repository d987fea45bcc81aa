"""The memory planner counts DoRA: its magnitude parameters, the two outputs per adapted layer that autograd
saves for the magnitude's gradient (measured here with saved-tensor hooks), and the weight it rebuilds."""

from __future__ import annotations

import dataclasses

import torch

from lorakit.plan.memory import (
    LORA_STATE_BYTES_PER_PARAM,
    ModelShape,
    TrainSettings,
    dora_transient_bytes,
    estimate_peak_memory,
    layer_activation_bytes,
    lora_parameter_count,
)

CONFIG = dict(model_type="llama", vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
              num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True, max_position_embeddings=2048)
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _peft_layer(use_dora: bool):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**{k: v for k, v in CONFIG.items() if k != "model_type"}))
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=list(TARGETS),
                                            use_dora=use_dora))


def _saved_bytes(use_dora: bool, tokens: int) -> int:
    """Bytes autograd saves in one decoder layer's forward of `tokens` tokens (each storage once)."""
    model = _peft_layer(use_dora)
    inner = model.base_model.model.model
    hidden = torch.randn(1, tokens, CONFIG["hidden_size"], requires_grad=True)
    positions = torch.arange(tokens)[None]
    rotary = inner.rotary_emb(hidden, positions)
    storages: dict[int, int] = {}
    alive = []  # hold every saved tensor, so a freed one's address cannot be reused and miscounted

    def pack(tensor):
        alive.append(tensor)
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        inner.layers[0](hidden, position_embeddings=rotary, attention_mask=None, position_ids=positions)
    return sum(storages.values())


def _settings(dora: bool) -> TrainSettings:
    return TrainSettings("none", 4, 4, TARGETS, False, tokens_per_micro_batch=512, dora=dora)


def test_dora_saved_bytes_per_token_match_the_measured_difference():
    shape = ModelShape.from_config(CONFIG)
    measured = ((_saved_bytes(True, 512) - _saved_bytes(False, 512))
                - (_saved_bytes(True, 256) - _saved_bytes(False, 256))) / 256
    predicted = layer_activation_bytes(shape, _settings(True)) - layer_activation_bytes(shape, _settings(False))
    assert predicted == measured == 2 * 4 * (4 * 64 + 2 * 128 + 64)  # two fp32 outputs of every adapted layer


def test_dora_parameters_are_counted_like_peft_makes_them():
    shape = ModelShape.from_config(CONFIG)
    trainable = lambda model: sum(p.numel() for p in model.parameters() if p.requires_grad)  # noqa: E731
    assert lora_parameter_count(shape, _settings(True)) == trainable(_peft_layer(True))
    assert lora_parameter_count(shape, _settings(False)) == trainable(_peft_layer(False))


def test_dora_raises_the_predicted_peak_by_its_terms_and_only_with_dora():
    shape = ModelShape.from_config({**CONFIG, "num_hidden_layers": 4})
    plain, dora = (estimate_peak_memory(shape, _settings(flag)) for flag in (False, True))
    assert dora.lora_states - plain.lora_states == 4 * (4 * 64 + 2 * 128 + 64) * LORA_STATE_BYTES_PER_PARAM
    assert dora.dequantize_buffer - plain.dequantize_buffer == dora_transient_bytes(shape, _settings(True))
    assert dora_transient_bytes(shape, _settings(True)) == (128 * 128 + 2 * 128 * 64) * 4  # down_proj: fan-in 128
    assert dora_transient_bytes(shape, dataclasses.replace(_settings(True), dora=False)) == 0
    assert dora.peak_allocated > plain.peak_allocated
