"""Helpers for the data tests: hand-made data files written into tmp_path.

A plain module, not a conftest.py: a second conftest would shadow `tests/conftest.py` for tests that import
helpers from it (`from conftest import ...`).
"""

from __future__ import annotations

import json
from pathlib import Path


def write_lines(directory: Path, name: str, *lines) -> Path:
    """Write a data file: str lines as-is, bytes raw, anything else as JSON; one per line."""
    chunks = []
    for line in lines:
        if isinstance(line, bytes):
            chunks.append(line + b"\n")
        elif isinstance(line, str):
            chunks.append(line.encode("utf-8") + b"\n")
        else:
            chunks.append(json.dumps(line).encode("utf-8") + b"\n")
    path = directory / name
    path.write_bytes(b"".join(chunks))
    return path
