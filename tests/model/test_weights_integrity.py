"""Issue 22: a Git LFS pointer or a cut-short model.safetensors is reported as an incomplete download naming the
file and what to do (it was a raw SafetensorError traceback)."""

from __future__ import annotations

import shutil

import pytest

from conftest import write_config_file
from lorakit.cli.app import run_cli
from lorakit.model.weights_integrity import safetensors_problem

POINTER = ("version https://git-lfs.github.com/spec/v1\noid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e"
           "2ca24d17e2393\nsize 6291888\n")


@pytest.fixture
def model_copy(tiny_llama_dir, tmp_path):
    return shutil.copytree(tiny_llama_dir, tmp_path / "model")


def test_a_whole_file_passes_and_damaged_ones_are_described(model_copy):
    weights = model_copy / "model.safetensors"
    assert safetensors_problem(weights) is None
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    assert safetensors_problem(weights) == f"is cut short ({len(data) // 2} of the {len(data)} bytes its header describes)"
    weights.write_bytes(data[:5])
    assert safetensors_problem(weights) == "is cut short (5 bytes, not even a header)"
    weights.write_text(POINTER)
    assert safetensors_problem(weights) == f"is a Git LFS pointer ({len(POINTER)} bytes of text), not the weights"


@pytest.mark.parametrize("damage", ["pointer", "cut"])
def test_train_names_the_incomplete_download_and_what_to_do(model_copy, tmp_path, capsys, damage):
    weights = model_copy / "model.safetensors"
    data = weights.read_bytes()
    weights.write_text(POINTER) if damage == "pointer" else weights.write_bytes(data[:-1000])
    config = write_config_file(tmp_path, model_copy, seed=1, training={"batch_size": 2, "max_steps": 1})
    assert run_cli(["train", str(config)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    what = (f"is a Git LFS pointer ({len(POINTER)} bytes of text), not the weights" if damage == "pointer"
            else f"is cut short ({len(data) - 1000} of the {len(data)} bytes its header describes)")
    assert err == (f"error: {weights} {what}: the download of the model is incomplete. hint: Fetch the real file: run "
                   "`git lfs pull` in the model folder (a clone without Git LFS holds pointers), or download the model "
                   "again, e.g. `hf download OWNER/NAME --local-dir FOLDER`.")
    assert not (tmp_path / "run").exists()
