"""ruff (lint and import order, configured in pyproject.toml) as part of the test command, so it holds like a test."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _ruff() -> list[str]:
    beside_python = Path(sys.executable).with_name("ruff")
    found = str(beside_python) if beside_python.exists() else shutil.which("ruff")
    assert found, "ruff is not installed: `bash scripts/setup.sh --test` installs it (the test extra)"
    return [found]


def test_ruff_finds_nothing_in_src_tests_bench_and_scripts() -> None:
    result = subprocess.run([*_ruff(), "check", "--no-cache", "src", "tests", "bench", "scripts"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_sees_an_unsorted_import(tmp_path: Path) -> None:
    """The control: the same configuration reports a file whose imports are out of order."""
    bad = tmp_path / "bad.py"
    bad.write_text("import sys\nimport os\n\nprint(os, sys)\n")
    result = subprocess.run([*_ruff(), "check", "--no-cache", "--config", str(ROOT / "pyproject.toml"), str(bad)],
                            capture_output=True, text=True)
    assert result.returncode == 1 and "I001" in result.stdout
