"""The examples in lorakit's docstrings run and print what they show (they document behaviour: keep them true)."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
MODULES = sorted(".".join(path.relative_to(SRC).with_suffix("").parts)
                 for path in (SRC / "lorakit").rglob("*.py") if ">>>" in path.read_text())


def test_modules_with_examples_are_found():
    assert len(MODULES) >= 30 and "lorakit.data.packing" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0, result
