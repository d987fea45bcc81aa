"""A copy of the tiny model that needs `trust_remote_code`: its Python files leave a marker file when imported."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def with_custom_code(tiny_llama_dir: Path, directory: Path, marker: Path, part: str) -> Path:
    """A copy of the tiny model whose config ('model') or tokenizer ('tokenizer') points at Python code that
    leaves `marker` behind if it is ever imported; once allowed, the model loads (its class names its config)."""
    shutil.copytree(tiny_llama_dir, directory)
    payload = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('remote code ran')\n"
    if part == "model":
        config = json.loads((directory / "config.json").read_text())
        config.update(model_type="lorakit_custom", auto_map={"AutoConfig": "configuration_custom.CustomConfig",
                                                             "AutoModelForCausalLM": "modeling_custom.CustomModel"})
        (directory / "config.json").write_text(json.dumps(config))
        (directory / "configuration_custom.py").write_text(payload + "from transformers import LlamaConfig\n"
                                                           "class CustomConfig(LlamaConfig):\n    model_type = 'lorakit_custom'\n")
        (directory / "modeling_custom.py").write_text(payload + "from transformers import LlamaForCausalLM\n"
                                                      "from .configuration_custom import CustomConfig\n"
                                                      "class CustomModel(LlamaForCausalLM):\n"
                                                      "    config_class = CustomConfig\n")
    else:
        tokenizer_config = json.loads((directory / "tokenizer_config.json").read_text())
        tokenizer_config.update(tokenizer_class="CustomTokenizer",
                                auto_map={"AutoTokenizer": ["tokenization_custom.CustomTokenizer", None]})
        (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
        (directory / "tokenization_custom.py").write_text(payload + "from transformers import PreTrainedTokenizerFast\n"
                                                          "class CustomTokenizer(PreTrainedTokenizerFast):\n    pass\n")
    return directory
