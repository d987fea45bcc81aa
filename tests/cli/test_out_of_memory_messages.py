"""Issue 22: out of GPU memory outside training's step (loading, eval, chat) is one message naming the command
and what to lower, exit 3, not a traceback (training's own step re-plans: tests/training/test_oom.py)."""

from __future__ import annotations

import pytest
import torch

from lorakit.cli.app import run_cli

CUDA_MESSAGE = "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 15.77 GiB"


def _out_of_memory(*args, **kwargs):
    raise torch.OutOfMemoryError(CUDA_MESSAGE + "\nOf the allocated memory 14.2 GiB is allocated by PyTorch")


@pytest.mark.parametrize(("command", "patched", "hint"), [
    (["eval", "RUN"], "lorakit.evaluation.run_eval.evaluate_run", "Pass a lower --max-new-tokens, or set "
     "eval.batch_size lower in the run's config.yaml (answers are generated that many at a time); or close other"),
    (["chat", "RUN", "-q", "What is asthma?"], "lorakit.inference.generate.load_run", "Pass a lower "
     "--max-new-tokens; or close other programs on the GPU (nvidia-smi lists them)"),
    (["export", "RUN", "--format", "merged"], "lorakit.export.run_export.export_run", "Close other programs on the "
     "GPU (nvidia-smi lists them), or load the base model in 4 bits (model.quantization: nf4)"),
])
def test_out_of_memory_outside_training_is_one_message(tmp_path, monkeypatch, capsys, command, patched, hint):
    monkeypatch.setattr(patched, _out_of_memory)
    argv = [str(tmp_path) if word == "RUN" else word for word in command]
    assert run_cli(argv) == 3
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith(f"error: Out of GPU memory in `lorakit {command[0]}` ({CUDA_MESSAGE}). hint: {hint}")
    assert "Traceback" not in err


def test_other_errors_keep_their_traceback(tmp_path, monkeypatch):
    def bug(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr("lorakit.inference.generate.load_run", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        run_cli(["chat", str(tmp_path), "-q", "What is asthma?"])
