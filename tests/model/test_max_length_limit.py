"""Issue 9, point 4: a model.max_length above the model's max_position_embeddings was accepted silently; it is
refused, naming both numbers and the key, as soon as the model's config.json is read (before any weights)."""

from __future__ import annotations

import pytest

from conftest import write_config_file
from lorakit.cli.app import run_cli

# The tiny test models are built with max_position_embeddings=2048 (tests/conftest.py).
MESSAGE = ("model.max_length: 4096 is more than the model's max_position_embeddings (2048 in its config.json); "
           "set model.max_length to 2048 or less")


def _config(tmp_path, model_dir, max_length):
    return write_config_file(tmp_path, model_dir, seed=1, training={"batch_size": 2, "max_steps": 1},
                             model={"name": str(model_dir), "max_length": max_length})


def test_train_refuses_max_length_beyond_the_model_before_loading_weights(tiny_llama_dir, tmp_path, capsys, monkeypatch):
    from lorakit.training import session

    def no_weights(*args, **kwargs):
        raise AssertionError("the weights were loaded before max_length was checked")

    monkeypatch.setattr(session, "load_base_model", no_weights)
    assert run_cli(["train", str(_config(tmp_path, tiny_llama_dir, 4096))]) == 2
    err = capsys.readouterr().err
    assert f"error: model.max_length: 1 config problem:\n  - {MESSAGE}" in err
    assert "Traceback" not in err and not (tmp_path / "run" / "final").exists()


def test_plan_refuses_it_too(tiny_llama_dir, tmp_path, capsys):
    assert run_cli(["plan", str(_config(tmp_path, tiny_llama_dir, 4096)), "--gpu-memory", "8GB"]) == 2
    assert MESSAGE in capsys.readouterr().err


@pytest.mark.parametrize("max_length", [2048, 16])
def test_max_length_up_to_the_limit_is_planned(tiny_llama_dir, tmp_path, capsys, max_length):
    assert run_cli(["plan", str(_config(tmp_path, tiny_llama_dir, max_length)), "--gpu-memory", "8GB"]) == 0
