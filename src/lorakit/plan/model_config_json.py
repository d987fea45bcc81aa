"""The model's config.json as the planner reads it before any weights exist: fetched alone (a local folder, the
embedded GGUF's header, or that one file from the Hub), and the first thing checked against it (model.max_length
against the positions the model was built for).
"""

from __future__ import annotations

import json
from pathlib import Path

from lorakit.config import EMBEDDED_MODEL_ALIAS, ModelConfig, RunConfig
from lorakit.errors import ConfigError

__all__ = ["read_model_config_json", "check_max_length"]


def read_model_config_json(model: ModelConfig) -> dict:
    """The model's config.json: from a local folder, the GGUF header, or the Hub (that one file, no weights)."""
    path = Path(model.name).expanduser()
    if model.name == EMBEDDED_MODEL_ALIAS or model.name.endswith(".gguf"):
        from transformers import AutoConfig

        from lorakit.model.gguf_cache import embedded_gguf_path

        gguf = embedded_gguf_path() if model.name == EMBEDDED_MODEL_ALIAS else path
        return AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name).to_dict()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError("model.name", [f"{path} has no config.json; it is not a transformers model folder"])
        return json.loads((path / "config.json").read_text())
    from lorakit.model.hub import download_model_file  # the Hub's failures as one message each, with a timeout

    return json.loads(download_model_file(model.name, "config.json", model.revision).read_text())


def check_max_length(config: RunConfig, model_config: dict) -> None:
    """Refuse a model.max_length beyond the positions the model was built for (its config.json), before any
    weights load: past them, attention sees position embeddings it never learned, silently.

    >>> from lorakit.config import RunConfig
    >>> config = RunConfig.model_validate({"data": {"train_file": "d.jsonl"}, "model": {"max_length": 4096}})
    >>> check_max_length(config, {"max_position_embeddings": 4096})
    >>> check_max_length(config, {"max_position_embeddings": 2048})
    Traceback (most recent call last):
    lorakit.errors.ConfigError: model.max_length: 1 config problem:
      - model.max_length: 4096 is more than the model's max_position_embeddings (2048 in its config.json); set model.max_length to 2048 or less
    """
    limit = model_config.get("max_position_embeddings") or model_config.get("n_positions")
    if isinstance(limit, int) and config.model.max_length > limit:
        raise ConfigError("model.max_length", [
            f"model.max_length: {config.model.max_length} is more than the model's max_position_embeddings ({limit} "
            f"in its config.json); set model.max_length to {limit} or less"])
