"""LoRA variants through peft (DoRA, rsLoRA, LoRA+) and NEFTune: each trains, saves, loads in plain peft, and a
resume with the setting changed is refused, naming it."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_run_config
from lorakit.errors import CheckpointError
from lorakit.training.loop import train


def _variant_config(model_dir, data, run, *, lora=None, **training):
    config = tiny_run_config(model_dir, data, run, max_steps=2, eval_steps=2, save_steps=2, **training)
    return config.model_copy(update={"lora": config.lora.model_copy(update=lora or {})})


def _plain_peft_logits(model_dir, adapter_dir, input_ids):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    with torch.no_grad():
        return model(input_ids=input_ids).logits, model


def _lorakit_logits(run_dir, input_ids):
    from lorakit.inference.generate import load_run

    loaded = load_run(run_dir)
    with torch.no_grad():
        return loaded.model(input_ids=input_ids).logits


INPUT_IDS = torch.tensor([[1, 520, 3000, 42, 2]])


def _assert_refused_on_change(config, run, key, label):
    changed = config.model_copy(deep=True)
    if key.startswith("lora."):
        changed.lora = changed.lora.model_copy(update={key.split(".")[1]: not getattr(config.lora, key.split(".")[1])})
    else:
        name = key.split(".")[1]
        changed.training = changed.training.model_copy(update={name: None})
    with pytest.raises(CheckpointError, match=f"Cannot resume: {label} changed"):
        train(changed, resume=True)


@pytest.mark.parametrize("architecture", ["llama", "phi3"])
def test_dora_trains_saves_loads_in_plain_peft_and_refuses_a_changed_resume(
        architecture, tiny_llama_dir, tiny_phi3_dir, qa_file, tmp_path):
    model_dir = tiny_llama_dir if architecture == "llama" else tiny_phi3_dir
    config = _variant_config(model_dir, qa_file, tmp_path / "run", lora={"use_dora": True})
    train(config)
    final = tmp_path / "run" / "final"
    assert json.loads((final / "adapter_config.json").read_text())["use_dora"] is True
    weights = load_file(final / "adapter_model.safetensors")
    magnitudes = [key for key in weights if "lora_magnitude_vector" in key]
    assert magnitudes, "DoRA saves a magnitude vector per adapted layer"
    logits, _ = _plain_peft_logits(model_dir, final, INPUT_IDS)
    torch.testing.assert_close(logits, _lorakit_logits(tmp_path / "run", INPUT_IDS), rtol=1e-5, atol=1e-5)
    _assert_refused_on_change(config, tmp_path / "run", "lora.use_dora", "lora.use_dora")


def test_rslora_scales_by_the_square_root_of_the_rank_and_loads_in_plain_peft(tiny_llama_dir, qa_file, tmp_path):
    config = _variant_config(tiny_llama_dir, qa_file, tmp_path / "run", lora={"use_rslora": True})
    train(config)
    final = tmp_path / "run" / "final"
    assert json.loads((final / "adapter_config.json").read_text())["use_rslora"] is True
    logits, model = _plain_peft_logits(tiny_llama_dir, final, INPUT_IDS)
    scalings = {m.scaling["default"] for m in model.modules() if isinstance(getattr(m, "scaling", None), dict)}
    assert len(scalings) == 1 and scalings.pop() == pytest.approx(config.lora.alpha / math.sqrt(config.lora.r))
    torch.testing.assert_close(logits, _lorakit_logits(tmp_path / "run", INPUT_IDS), rtol=1e-5, atol=1e-5)
    _assert_refused_on_change(config, tmp_path / "run", "lora.use_rslora", "lora.use_rslora")


def test_loraplus_gives_b_matrices_ratio_times_the_learning_rate(tiny_llama_dir, qa_file, tmp_path):
    from lorakit.training.session import build_session
    from lorakit.training.metrics import SilentReporter
    from lorakit.training.schedule import build_optimizer

    config = _variant_config(tiny_llama_dir, qa_file, tmp_path / "run", loraplus_lr_ratio=16.0)
    session = build_session(config, SilentReporter())
    optimizer = build_optimizer(session.model, config.training)
    names = {id(p): n for n, p in session.model.named_parameters()}
    rates = {}
    for group in optimizer.param_groups:
        for param in group["params"]:
            rates[names[id(param)]] = group["lr"]
    a_rates = {lr for name, lr in rates.items() if "lora_A" in name}
    b_rates = {lr for name, lr in rates.items() if "lora_B" in name}
    assert a_rates == {config.training.learning_rate}
    assert b_rates == {config.training.learning_rate * 16.0}
    assert len(rates) == sum(p.requires_grad for p in session.model.parameters())  # every trainable parameter, once

    train(config)
    final = tmp_path / "run" / "final"
    logits, _ = _plain_peft_logits(tiny_llama_dir, final, INPUT_IDS)
    torch.testing.assert_close(logits, _lorakit_logits(tmp_path / "run", INPUT_IDS), rtol=1e-5, atol=1e-5)
    _assert_refused_on_change(config, tmp_path / "run", "training.loraplus_lr_ratio", "training.loraplus_lr_ratio")


def test_neftune_noises_embeddings_in_training_only_and_the_adapter_loads_without_it(tiny_llama_dir, qa_file, tmp_path):
    from lorakit.training.session import build_session
    from lorakit.training.metrics import SilentReporter

    config = _variant_config(tiny_llama_dir, qa_file, tmp_path / "run", neftune_noise_alpha=5.0)
    session = build_session(config, SilentReporter())
    embeddings = session.model.get_input_embeddings()
    session.model.train()
    first, second = embeddings(INPUT_IDS), embeddings(INPUT_IDS)
    assert not torch.equal(first, second)
    clean = torch.nn.functional.embedding(INPUT_IDS, embeddings.weight)
    bound = 5.0 / math.sqrt(INPUT_IDS.shape[1] * embeddings.weight.shape[1])
    assert (first - clean).abs().max() <= bound + 1e-6
    session.model.eval()
    assert torch.equal(embeddings(INPUT_IDS), clean)

    train(config)
    final = tmp_path / "run" / "final"
    assert "neftune" not in (final / "adapter_config.json").read_text()
    logits, _ = _plain_peft_logits(tiny_llama_dir, final, INPUT_IDS)
    torch.testing.assert_close(logits, _lorakit_logits(tmp_path / "run", INPUT_IDS), rtol=1e-5, atol=1e-5)
    _assert_refused_on_change(config, tmp_path / "run", "training.neftune_noise_alpha", "training.neftune_noise_alpha")
