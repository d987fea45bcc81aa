"""Resolve `model.name` to a local folder, then load the tokenizer and base model from safetensors."""

from __future__ import annotations

import hashlib
import json
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from lorakit.config import EMBEDDED_MODEL_ALIAS, ModelConfig
from lorakit.errors import ModelLoadError
from lorakit.model.gguf_cache import cached_gguf_conversion, embedded_gguf_path
from lorakit.model.hub import download_model
from lorakit.model.transformers_version import require_supported_transformers
from lorakit.model.weights_integrity import check_safetensors_complete
from lorakit.runtime.logging import get_logger

__all__ = ["ModelSource", "resolve_model_source", "load_tokenizer", "load_base_model", "model_fingerprint",
           "tokenizer_fingerprint"]

log = get_logger("model.load")

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelSource:
    """Where the weights are on disk, and how to name them in manifests."""

    directory: Path
    model_id: str
    revision: str | None
    kind: str  # "embedded", "gguf", "local" or "hub"


def resolve_model_source(config: ModelConfig) -> ModelSource:
    """Embedded alias, .gguf file, local directory, or Hub id, in that order; no silent fallbacks."""
    name = config.name
    if name == EMBEDDED_MODEL_ALIAS:
        return ModelSource(cached_gguf_conversion(embedded_gguf_path()), EMBEDDED_MODEL_ALIAS, None, "embedded")
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            raise ModelLoadError(f"model.name: GGUF file {path} does not exist.")
        return ModelSource(cached_gguf_conversion(path.resolve()), name, None, "gguf")
    if path.is_dir():
        _check_weights_format(path, config.allow_pickle)
        return ModelSource(path.resolve(), str(path.resolve()), None, "local")
    if path.exists() or name.startswith((".", "/", "~")) or not _HUB_ID.match(name):
        raise ModelLoadError(
            f"model.name: '{name}' is neither a local model directory, a .gguf file, a Hub id (owner/name), "
            f"nor the embedded default '{EMBEDDED_MODEL_ALIAS}'."
        )
    directory = download_model(
        name, config.revision, allow_pickle=config.allow_pickle, trust_remote_code=config.trust_remote_code
    )
    _check_weights_format(directory, config.allow_pickle)
    return ModelSource(directory, name, config.revision or _snapshot_revision(directory), "hub")


_WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth"}


def model_fingerprint(directory: Path) -> str:
    """sha256 over config.json and, per weights file, its name, size and the MiB at its start, middle and end.

    Recorded in checkpoints so that resuming onto different weights in the same folder is refused. Sampling
    3 MiB per file instead of every byte keeps it instant for multi-GB models, while another fine-tune or
    quantisation of the same architecture still differs in the sampled bytes.
    """
    digest = hashlib.sha256((directory / "config.json").read_bytes())
    for path in sorted(p for p in directory.iterdir() if p.suffix in _WEIGHT_SUFFIXES and p.is_file()):
        size = path.stat().st_size
        digest.update(f"\x1e{path.name}\x1f{size}\x1f".encode())
        with open(path, "rb") as handle:
            for offset in (0, size // 2, max(size - (1 << 20), 0)):
                handle.seek(offset)
                digest.update(handle.read(1 << 20))
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 over the vocabulary, the special tokens and the chat template: what turns text into the ids a run
    trained on (the tokenizer files are not part of `model_fingerprint`, and editing them changes every id)."""
    parts = [sorted(tokenizer.get_vocab().items()), tokenizer.all_special_tokens, tokenizer.chat_template]
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()


def _snapshot_revision(directory: Path) -> str | None:
    """HF cache snapshots are named by commit hash: record it so the manifest pins the exact weights."""
    return directory.name if re.fullmatch(r"[0-9a-f]{40}", directory.name) else None


def _check_weights_format(directory: Path, allow_pickle: bool) -> None:
    if not (directory / "config.json").is_file():
        raise ModelLoadError(f"{directory} has no config.json; it is not a transformers model directory.")
    if any(directory.glob("*.safetensors")):
        check_safetensors_complete(directory)  # a Git LFS pointer or a cut-short file, named before loading
        return
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in {".bin", ".pt", ".pth"})
    if pickles and not allow_pickle:
        raise ModelLoadError(
            f"{directory} holds only pickle weights ({', '.join(pickles[:3])}), which can run arbitrary code when loaded.",
            hint="Convert them to safetensors, or set model.allow_pickle: true (or pass --allow-pickle) if you trust the source.",
        )
    if not pickles:
        raise ModelLoadError(f"{directory} has no weights (*.safetensors).")


def _needs_remote_code(source: ModelSource) -> ModelLoadError:
    return ModelLoadError(
        f"{source.model_id} needs custom Python code shipped with the model to load, and lorakit does not run it "
        "unless asked.",
        hint="Review the code on the model page, then set model.trust_remote_code: true.",
    )


def load_tokenizer(source: ModelSource, config: ModelConfig):
    """The model's tokenizer; a missing pad token becomes the eos token (labels never rely on the pad id)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source.directory, trust_remote_code=config.trust_remote_code)
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise _needs_remote_code(source) from None
        raise
    if config.chat_template is not None:
        from lorakit.data.chat_template import apply_chat_template_override

        apply_chat_template_override(tokenizer, config.chat_template)
    elif tokenizer.chat_template is None:
        raise ModelLoadError(
            f"{source.model_id} has no chat template; lorakit renders every example with the model's own template.",
            hint="Use an instruct/chat model (e.g. microsoft/Phi-4-mini-instruct), or set model.chat_template "
            "(chatml, phi4, llama3 or a Jinja file).",
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def read_model_config(source: ModelSource) -> dict:
    return json.loads((source.directory / "config.json").read_text())


def load_base_model(
    source: ModelSource,
    config: ModelConfig,
    device: torch.device,
    dtype: torch.dtype,
    quantization_config=None,
):
    """The base causal LM on `device`, weights from safetensors unless pickle is explicitly allowed."""
    from transformers import AutoModelForCausalLM

    require_supported_transformers()  # before minutes of loading, not at the first answer

    kwargs = {}
    if device.type == "cuda":
        kwargs["device_map"] = {"": device.index or 0}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source.directory,
            dtype=dtype,
            use_safetensors=not config.allow_pickle or any(source.directory.glob("*.safetensors")),
            trust_remote_code=config.trust_remote_code,
            quantization_config=quantization_config,
            # transformers >= 5.25 kernelizes with Hub kernels by default (code fetched from the Hub at load,
            # and an error where the `kernels` package is missing): lorakit picks its own kernels
            use_kernels=False,
            **kwargs,
        )
    except pickle.UnpicklingError:
        # transformers reads pickle weights with torch.load(weights_only=True): a file carrying anything but
        # tensors is refused here instead of being executed.
        raise ModelLoadError(
            f"{source.directory} holds pickle weights with Python objects other than tensors; lorakit refuses to "
            "load them even with allow_pickle.",
            hint="Use a safetensors copy of the model from a source you trust.",
        ) from None
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise _needs_remote_code(source) from None
        raise
    if device.type != "cuda":
        model.to(device)
    return model
