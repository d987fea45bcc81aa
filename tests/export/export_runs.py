"""Finished runs for the export tests: a tiny run trained for real (shared with the eval tests), copied per
test, and a helper that fingerprints a run directory so a test can prove an export left it untouched."""

from __future__ import annotations

import hashlib
from pathlib import Path

from evaluation.eval_runs import copy_run, trained_tiny_run


def tiny_run(model_dir: Path, workspace: Path, target: Path) -> Path:
    """A private copy of the tiny trained run on `model_dir` (trained once per session)."""
    return copy_run(trained_tiny_run(model_dir, workspace), target)


def tree_fingerprint(root: Path) -> dict[str, str]:
    """Relative path -> sha256 (or 'dir') for everything under root, hidden staging folders included."""
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}
