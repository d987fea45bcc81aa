"""Whether a base model's safetensors files are whole, read from their headers before anything loads them.

Two ways a download ends up incomplete without anyone noticing: a `git clone` without Git LFS leaves a small
text pointer ("version https://git-lfs.github.com/spec/v1 ...") under the weights' name, and a copy or
download cut short leaves a file shorter than its header says. safetensors then fails deep in loading with
a raw SafetensorError; here the file is named, with what to do.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from lorakit.errors import ModelLoadError

__all__ = ["LFS_POINTER_PREFIX", "safetensors_problem", "check_safetensors_complete"]

LFS_POINTER_PREFIX = b"version https://git-lfs"
_MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit on the JSON header


def safetensors_problem(path: Path) -> str | None:
    """What makes `path` an incomplete safetensors file (a Git LFS pointer, cut short), or None when whole."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(len(LFS_POINTER_PREFIX))
        if head.startswith(LFS_POINTER_PREFIX):
            return f"is a Git LFS pointer ({size} bytes of text), not the weights"
        start = head[:8]
        if len(start) < 8:
            return f"is cut short ({size} bytes, not even a header)"
        (header_bytes,) = struct.unpack("<Q", start)
        if header_bytes > _MAX_HEADER_BYTES or 8 + header_bytes > size:
            return f"is cut short ({size} bytes; its header alone would be {8 + header_bytes})"
        handle.seek(8)
        try:
            header = json.loads(handle.read(header_bytes))
            end = max((entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError):
            return "has an unreadable header (it is not a safetensors file, or it is damaged)"
    expected = 8 + header_bytes + end
    if size < expected:
        return f"is cut short ({size} of the {expected} bytes its header describes)"
    return None


def check_safetensors_complete(directory: Path) -> None:
    """ModelLoadError naming the first incomplete *.safetensors file of a model folder, and what to do."""
    for path in sorted(directory.glob("*.safetensors")):
        problem = safetensors_problem(path)
        if problem is None:
            continue
        hub_cache = "/snapshots/" in path.as_posix()
        hint = ("Delete this model's folder in the Hugging Face cache (or run `hf download` for it again) and run "
                "the command again." if hub_cache else
                "Fetch the real file: run `git lfs pull` in the model folder (a clone without Git LFS holds pointers), "
                "or download the model again, e.g. `hf download OWNER/NAME --local-dir FOLDER`.")
        raise ModelLoadError(f"{path} {problem}: the download of the model is incomplete.", hint=hint)
