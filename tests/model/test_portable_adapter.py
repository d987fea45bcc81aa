"""Issue 9, point 7: the adapter names its base model by a public name (no path into this machine's cache),
the manifest keeps the local path and the weights' sha256, and 4-bit weights are counted unpacked."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch

from conftest import tiny_run_config
from lorakit.model.adapters import parameter_count, public_model_name, trainable_parameter_count
from lorakit.model.gguf_cache import EMBEDDED_HUB_ID
from lorakit.model.load import ModelSource
from lorakit.training.loop import train


def test_public_name_of_each_kind_of_source(tmp_path):
    cache = tmp_path / "cache" / "gguf" / "SmolLM2-135M-Instruct.Q4_1-04da094c"
    cache.mkdir(parents=True)
    (cache / "config.json").write_text("{}")
    assert EMBEDDED_HUB_ID == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert public_model_name(ModelSource(cache, "smollm2-135m-instruct", None, "embedded")) == EMBEDDED_HUB_ID
    hub_snapshot = tmp_path / "hub" / "snapshots" / ("a" * 40)
    assert public_model_name(ModelSource(hub_snapshot, "microsoft/Phi-4-mini-instruct", "main", "hub")) == \
        "microsoft/Phi-4-mini-instruct"
    local = tmp_path / "models" / "my-phi"
    local.mkdir(parents=True)
    (local / "config.json").write_text(json.dumps({"_name_or_path": "microsoft/Phi-4-mini-instruct"}))
    assert public_model_name(ModelSource(local, str(local), None, "local")) == "microsoft/Phi-4-mini-instruct"
    (local / "config.json").write_text(json.dumps({"_name_or_path": str(local)}))  # a path is not a public name
    assert public_model_name(ModelSource(local, str(local), None, "local")) == "my-phi"
    assert public_model_name(ModelSource(cache, "models/tiny-q8.gguf", None, "gguf")) == "tiny-q8"


def test_final_adapter_config_names_no_local_path_and_manifest_keeps_it(tiny_llama_dir, qa_file, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(tiny_run_config(tiny_llama_dir, qa_file, tmp_path / "run", max_steps=2))
    # Saving never looks the public name up on the Hub (peft's save_embedding_layers="auto" would, every save).
    assert not [w for w in caught if "remote file" in str(w.message) or "Could not find a config" in str(w.message)]
    for adapter_dir in (result.adapter_dir, *sorted((tmp_path / "run" / "checkpoints").iterdir())):
        adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
        assert adapter_config["base_model_name_or_path"] == tiny_llama_dir.name, adapter_dir
    written = (result.adapter_dir / "adapter_config.json").read_text()
    assert str(tmp_path) not in written and str(tiny_llama_dir) not in written and str(Path.home()) not in written
    base = json.loads((result.adapter_dir / "manifest.json").read_text())["base_model"]
    assert base["public_name"] == tiny_llama_dir.name
    assert base["local_path"] == str(tiny_llama_dir.resolve())
    weights = (tiny_llama_dir / "model.safetensors").read_bytes()
    assert base["weights_sha256"] == {"model.safetensors": hashlib.sha256(weights).hexdigest()}


def test_4bit_parameters_are_counted_unpacked():
    """bitsandbytes' Params4bit holds two 4-bit weights per uint8 element; its quant_state keeps the real shape
    (faked here: bitsandbytes has no CPU build in the test environment)."""
    packed = torch.nn.Parameter(torch.zeros(3072 * 8192 // 2, 1, dtype=torch.uint8), requires_grad=False)
    packed.quant_state = SimpleNamespace(shape=torch.Size([8192, 3072]))
    assert packed.numel() == 3072 * 8192 // 2 and parameter_count(packed) == 3072 * 8192
    model = torch.nn.Module()
    model.frozen = packed
    model.lora = torch.nn.Parameter(torch.zeros(16, 3072))
    assert trainable_parameter_count(model) == (16 * 3072, 3072 * 8192 + 16 * 3072)
