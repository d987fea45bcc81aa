"""Where lorakit keeps what it can rebuild: the GGUF weights converted to safetensors (model/gguf_cache.py) and
tokenized data (data/token_cache.py). Here, on the ground floor, because both data/ and model/ write there."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_root"]


def cache_root() -> Path:
    """LORAKIT_CACHE_DIR, else ~/.cache/lorakit."""
    return Path(os.environ.get("LORAKIT_CACHE_DIR", Path.home() / ".cache" / "lorakit"))
