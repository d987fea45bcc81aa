"""Finished runs for the export tests: a tiny run trained for real (shared with the eval tests), copied per
test, a run on data whose file name and records hold patient identifiers, and a helper that fingerprints a
run directory so a test can prove an export left it untouched."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from conftest import QA_PAIRS, tiny_run_config
from evaluation.eval_runs import copy_run, trained_tiny_run


def tiny_run(model_dir: Path, workspace: Path, target: Path) -> Path:
    """A private copy of the tiny trained run on `model_dir` (trained once per session)."""
    return copy_run(trained_tiny_run(model_dir, workspace), target)


def tree_fingerprint(root: Path) -> dict[str, str]:
    """Relative path -> sha256 (or 'dir') for everything under root, hidden staging folders included."""
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


PATIENT_FILE = "jane_doe_MRN448812_notes.jsonl"  # a file name that is itself patient data
SOURCE_URL = "https://intranet.example.org/patients/448812/notes"


_PATIENT_RUNS: dict[Path, Path] = {}


def run_on_patient_named_data(model_dir: Path, workspace: Path) -> Path:
    """A tiny run on PATIENT_FILE, whose records carry SOURCE_URL in `source_urls` (trained once per session;
    later calls return the same run, so do not write to it)."""
    if model_dir not in _PATIENT_RUNS:
        from lorakit.training.loop import train

        data = workspace / PATIENT_FILE
        data.write_text("".join(json.dumps({"instruction": q, "response": a, "source_urls": [SOURCE_URL]}) + "\n"
                                for q, a in QA_PAIRS))
        train(tiny_run_config(model_dir, data, workspace / "run"))
        _PATIENT_RUNS[model_dir] = workspace / "run"
    return _PATIENT_RUNS[model_dir]


def secrets_of(run_dir: Path, model_dir: Path) -> list[bytes]:
    """What no published file may hold: the data file's name (and its identifiers), the records' source URL,
    and this machine's paths (the run folder, the data folder, the base model folder)."""
    return [s.encode() for s in (PATIENT_FILE, "MRN448812", "jane_doe", SOURCE_URL, "intranet.example.org",
                                 str(run_dir), str(run_dir.parent), str(model_dir))]


def leaks(files: dict[str, bytes], secrets: list[bytes]) -> list[tuple[str, str]]:
    return [(name, secret.decode()) for name, data in files.items() for secret in secrets if secret in data]
