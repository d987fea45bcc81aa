"""Helpers for the data tests: hand-made data files written into tmp_path.

A plain module, not a conftest.py: a second conftest would shadow `tests/conftest.py` for tests that import
helpers from it. Test modules import the fixture: `from data_files import write_lines`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture
def write_lines(tmp_path):
    """write_lines("name.jsonl", line, ...) -> path; str lines are written as-is, dicts as JSON, bytes raw."""

    def write(name: str, *lines) -> Path:
        path = tmp_path / name
        chunks = []
        for line in lines:
            if isinstance(line, bytes):
                chunks.append(line + b"\n")
            elif isinstance(line, str):
                chunks.append(line.encode("utf-8") + b"\n")
            else:
                chunks.append(json.dumps(line).encode("utf-8") + b"\n")
        path.write_bytes(b"".join(chunks))
        return path

    return write

