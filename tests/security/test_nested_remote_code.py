"""Issue 22, fault matrix row 8: a model whose sub-configs (vision_config, audio_config) ask for remote code
(their own `auto_map`, `trust_remote_code: true`) next to Python files that leave a marker when imported. With
model.trust_remote_code off (the default) the code never runs: not when the model loads, trains, or when the
run is loaded again for chat. (The Hub never sends the .py files: test_secrets_and_trust.py.)"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from lorakit.config import ModelConfig
from lorakit.model.load import load_base_model, load_tokenizer, resolve_model_source

PAYLOAD = "import pathlib\npathlib.Path({marker!r}).write_text('remote code ran')\n"


def _nested_custom_code(tiny_llama_dir, directory, marker):
    shutil.copytree(tiny_llama_dir, directory)
    config = json.loads((directory / "config.json").read_text())
    auto_map = {"AutoConfig": "configuration_custom.CustomConfig",
                "AutoModelForCausalLM": "modeling_custom.CustomModel",
                "AutoModel": "modeling_custom.CustomModel", "AutoTokenizer": ["tokenization_custom.Custom", None]}
    for sub in ("vision_config", "audio_config"):
        config[sub] = {"model_type": "lorakit_custom", "auto_map": auto_map, "trust_remote_code": True}
    (directory / "config.json").write_text(json.dumps(config))
    for module in ("configuration_custom", "modeling_custom", "tokenization_custom"):
        (directory / f"{module}.py").write_text(PAYLOAD.format(marker=str(marker)))
    return directory


@pytest.mark.parametrize("trust", [False, True], ids=["default", "trust-on"])
def test_remote_code_asked_for_in_a_nested_sub_config_never_runs(tiny_llama_dir, tmp_path, trust):
    """Even model.trust_remote_code: true runs none of it: transformers follows `auto_map` at the top level of a
    config only, so what a sub-config asks for is inert; the default never runs code anywhere."""
    marker = tmp_path / "marker"
    config = ModelConfig(name=str(_nested_custom_code(tiny_llama_dir, tmp_path / "nested", marker)),
                         trust_remote_code=trust)
    source = resolve_model_source(config)
    tokenizer = load_tokenizer(source, config)
    model = load_base_model(source, config, torch.device("cpu"), torch.float32)
    assert type(model).__name__ == "LlamaForCausalLM" and type(tokenizer).__module__.startswith("transformers.")
    assert not marker.exists()
