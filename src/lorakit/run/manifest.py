"""The run manifest: what produced an adapter, so later steps (eval, chat, export) need nothing else.

It records versions, data hash, seed, split sizes and metrics, and never any credential.
"""

from __future__ import annotations

import hashlib
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from lorakit.config import EMBEDDED_MODEL_ALIAS

__all__ = ["package_versions", "build_manifest", "public_base_model_id", "weights_sha256"]

_PACKAGES = ("lorakit", "torch", "transformers", "peft", "accelerate", "safetensors", "bitsandbytes", "liger-kernel")


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def weights_sha256(directory: Path) -> dict[str, str]:
    """sha256 of every weights file in the base model's folder, by file name (the full bytes, not a sample:
    this is the record that says which weights an adapter was trained on)."""
    digests = {}
    for path in sorted(p for p in directory.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth") and p.is_file()):
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 24), b""):
                digest.update(block)
        digests[path.name] = digest.hexdigest()
    return digests


def build_manifest(*, identity: dict, seed: int, split_sizes: dict, data: dict, metrics: dict, settings: dict) -> dict:
    return {
        "lorakit_manifest_version": 1,
        "base_model": {"id": identity["model_id"], "revision": identity["model_revision"]},
        "identity": identity,
        "seed": seed,
        "split_sizes": split_sizes,
        "data": data,
        "settings": settings,
        "metrics": metrics,
        "versions": package_versions(),
    }


def public_base_model_id(manifest: dict) -> str:
    """The base model as a published file may name it: the Hub id or embedded alias, never a local path."""
    base = manifest["base_model"]
    model_id = base["id"]
    public = base.get("public_name")  # absent in manifests written before public_name was recorded
    if public is None:
        is_path = model_id.startswith(("/", ".", "~")) or model_id.endswith(".gguf")
        public = model_id.rstrip("/").rsplit("/", 1)[-1].removesuffix(".gguf") if is_path else model_id
    return model_id if model_id in (EMBEDDED_MODEL_ALIAS, public) else public
