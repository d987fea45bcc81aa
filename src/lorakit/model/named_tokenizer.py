"""A tokenizer named the way `model.name` is, for the `lorakit data` commands: no weights are loaded.

The embedded alias and .gguf files go through the same cached conversion as training (so the counts match
what training will see); a folder may hold a whole model or only the tokenizer files; a Hub id fetches the
tokenizer files alone, never the weights.
"""

from __future__ import annotations

from pathlib import Path

from lorakit.config import EMBEDDED_MODEL_ALIAS, ModelConfig
from lorakit.errors import ModelLoadError
from lorakit.model.gguf_cache import embedded_gguf_path, gguf_is_converted
from lorakit.model.hub import download_tokenizer, is_hub_id
from lorakit.model.load import ModelSource, load_tokenizer, resolve_model_source

__all__ = ["load_named_tokenizer", "load_model_tokenizer"]

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def _source(name: str, option: str, revision: str | None = None) -> ModelSource:
    path = Path(name).expanduser()
    if path.is_dir():
        if not any((path / file).is_file() for file in _TOKENIZER_FILES):
            raise ModelLoadError(f"{option}: {path} holds no tokenizer (no {' or '.join(_TOKENIZER_FILES[:2])}).")
        return ModelSource(path.resolve(), str(path.resolve()), None, "local")
    if name == EMBEDDED_MODEL_ALIAS or (name.endswith(".gguf") and path.is_file()):
        return resolve_model_source(ModelConfig(name=name))
    if not path.exists() and not name.startswith((".", "/", "~")) and is_hub_id(name):
        return ModelSource(download_tokenizer(name, revision), name, revision, "hub")
    raise ModelLoadError(
        f"{option}: '{name}' is neither a model or tokenizer folder, a .gguf file, a Hub id (owner/name), nor the "
        f"embedded model '{EMBEDDED_MODEL_ALIAS}'.",
        hint=f"For example {option} {EMBEDDED_MODEL_ALIAS}, or {option} microsoft/Phi-4-mini-instruct.",
    )


def load_named_tokenizer(name: str, *, option: str = "--tokenizer"):
    """The tokenizer (with its chat template) that `name` names; `option` is how the user gave it, for messages."""
    return load_tokenizer(_source(name, option), ModelConfig(name=name))


def load_model_tokenizer(model: ModelConfig):
    """The tokenizer `lorakit train` renders with for `model` (its revision and chat template override too), without
    the weights: for `lorakit plan`, which renders a preference run's pairs (training/planned_pairs.py). A GGUF's
    (the embedded model's too) is read from its safetensors conversion, which loads and writes every weight (45 s and
    0.5 GB for the embedded 135M model): a GGUF not yet converted is a ModelLoadError here, not a conversion."""
    # the path model/load.resolve_model_source converts (the conversion's folder is named by the file's stem)
    gguf = embedded_gguf_path() if model.name == EMBEDDED_MODEL_ALIAS else Path(model.name).expanduser().resolve()
    if gguf.suffix == ".gguf" and gguf.is_file() and not gguf_is_converted(gguf):
        raise ModelLoadError(f"model.name: {gguf.name} is not converted to safetensors yet (`lorakit train` converts "
                             "it once; the plan converts no weights)")
    return load_tokenizer(_source(model.name, "model.name", model.revision), model)
