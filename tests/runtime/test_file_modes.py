"""Files lorakit publishes (the adapter, a merged model) are as readable as the umask allows, as plain open() makes
them: safetensors writes its file 0600 and renames it into place, so another user or a container could not read it."""

from __future__ import annotations

import os
import stat

import pytest
import torch
from safetensors.torch import save_file

from conftest import tiny_run_config, write_qa_jsonl
from lorakit.runtime.atomic_files import atomic_directory, current_umask
from lorakit.training.loop import train


@pytest.fixture
def umask():
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_safetensors_alone_writes_a_private_file(tmp_path, umask):
    save_file({"w": torch.zeros(2)}, tmp_path / "w.safetensors")
    assert _mode(tmp_path / "w.safetensors") == 0o600  # what the fix is for (if this fails, safetensors changed)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_directory_gives_files_the_modes_the_umask_allows(tmp_path, umask, mask, expected):
    umask(mask)
    assert current_umask() == mask
    with atomic_directory(tmp_path / "out") as staging:
        save_file({"w": torch.zeros(2)}, staging / "w.safetensors")
        (staging / "script.sh").write_text("#!/bin/sh\n")
        os.chmod(staging / "script.sh", 0o700)
    assert _mode(tmp_path / "out" / "w.safetensors") == expected
    assert _mode(tmp_path / "out" / "script.sh") == expected | 0o700  # bits are only added, never taken


def test_the_trained_adapter_is_readable_by_others(tiny_llama_dir, tmp_path, umask):
    run = train(tiny_run_config(tiny_llama_dir, write_qa_jsonl(tmp_path / "qa.jsonl"), tmp_path / "run",
                                max_steps=1, eval_steps=1, save_steps=1)).run_dir
    assert {p.name: _mode(p) for p in (run / "final").iterdir()}["adapter_model.safetensors"] == 0o644
    assert all(_mode(p) == 0o644 for p in (run / "final").iterdir() if p.is_file())
