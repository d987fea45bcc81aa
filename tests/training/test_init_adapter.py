"""training.init_adapter: a finished run's adapter is copied into the fresh LoRA layers exactly; another shape is
refused naming what differs."""

from __future__ import annotations

import pytest
import torch

from conftest import lora_model_with_nonzero_b
from lorakit.config import LoraSettings
from lorakit.errors import ConfigError
from lorakit.model.adapters import lora_state_dict
from lorakit.training.init_adapter import load_init_adapter


def test_the_adapter_of_a_run_folder_is_loaded_bit_exactly_and_a_mismatch_is_refused(tiny_llama_dir, tmp_path):
    torch.manual_seed(0)
    trained = lora_model_with_nonzero_b(tiny_llama_dir)
    trained.save_pretrained(tmp_path / "run" / "final")
    torch.manual_seed(1)
    fresh = lora_model_with_nonzero_b(tiny_llama_dir)
    settings = LoraSettings(r=8, alpha=16, dropout=0.1)
    targets = sorted(fresh.peft_config["default"].target_modules)
    digest = load_init_adapter(fresh, tmp_path / "run", settings, targets)
    assert len(digest) == 64
    expected, loaded = lora_state_dict(trained), lora_state_dict(fresh)
    assert expected.keys() == loaded.keys() and all(torch.equal(expected[k], loaded[k]) for k in expected)
    with pytest.raises(ConfigError) as caught:
        load_init_adapter(fresh, tmp_path / "run", LoraSettings(r=4, alpha=16), targets)
    assert "r: the adapter has 8, this run's lora settings give 4" in str(caught.value)
    with pytest.raises(ConfigError, match="no adapter found"):
        load_init_adapter(fresh, tmp_path, settings, targets)
