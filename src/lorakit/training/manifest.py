"""The run manifest: what produced an adapter, so later steps (eval, chat, export) need nothing else.

It records versions, data hash, seed, split sizes and metrics, and never any credential.
"""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

__all__ = ["package_versions", "build_manifest"]

_PACKAGES = ("lorakit", "torch", "transformers", "peft", "accelerate", "safetensors", "bitsandbytes", "liger-kernel")


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


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
