"""A run folder can come from anyone (a download, a colleague's copy): the config.yaml saved in it may ask for the
base model's own Python code or pickled weights, but only the person running chat/eval/serve/export grants them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from custom_code import with_custom_code

from evaluation.eval_runs import copy_run, trained_tiny_run
from lorakit.cli.app import run_cli


def _run_asking_for(tiny_llama_dir, tmp_path_factory, tmp_path, **model) -> Path:
    """A copy of the tiny trained run whose saved config was edited to set `model` values."""
    run = copy_run(trained_tiny_run(tiny_llama_dir, tmp_path_factory.getbasetemp() / "eval-workspace"), tmp_path / "run")
    saved = run / "final" / "config.yaml"
    config = yaml.safe_load(saved.read_text())
    config["model"].update(model)
    saved.write_text(yaml.safe_dump(config))
    return run


@pytest.fixture
def planted_run(tiny_llama_dir, tmp_path_factory, tmp_path) -> tuple[Path, Path]:
    """A finished run whose saved config loads a base model with code that leaves a marker file."""
    marker = tmp_path / "marker"
    custom = with_custom_code(tiny_llama_dir, tmp_path / "custom", marker, "model")
    return _run_asking_for(tiny_llama_dir, tmp_path_factory, tmp_path, name=str(custom), trust_remote_code=True), marker


def _refusal(run: Path, custom: str) -> str:
    return (f"error: {run / 'final' / 'config.yaml'}: 1 config problem:\n"
            f"  - model.trust_remote_code: true would run Python code shipped with the base model ({custom}) on this "
            "machine; pass --trust-remote-code if you trust that code\n"
            "hint: A run's saved config cannot turn these on by itself: the run folder may come from someone else.\n")


@pytest.mark.parametrize("command", [["chat", "-q", "What is asthma?"], ["eval", "--no-report"],
                                     ["export", "--format", "merged"]])
def test_a_saved_config_cannot_turn_on_remote_code(planted_run, tmp_path, capsys, command):
    run, marker = planted_run
    name, *options = command
    if name == "export":
        options += ["--output", str(tmp_path / "merged")]
    assert run_cli([name, str(run), *options]) == 2
    assert capsys.readouterr().err == _refusal(run, str(tmp_path / "custom"))
    assert not marker.exists() and not (tmp_path / "merged").exists() and not (run / "eval").exists()


def test_the_person_running_chat_can_allow_it(planted_run, capsys):
    run, marker = planted_run
    assert run_cli(["chat", str(run), "-q", "What is asthma?", "--trust-remote-code"]) == 0
    assert marker.read_text() == "remote code ran"
    assert "answer:" in capsys.readouterr().out


def test_a_saved_config_cannot_turn_on_pickle_loading(tiny_llama_dir, tmp_path_factory, tmp_path, capsys):
    run = _run_asking_for(tiny_llama_dir, tmp_path_factory, tmp_path, allow_pickle=True)
    assert run_cli(["chat", str(run), "-q", "What is asthma?"]) == 2
    assert (f"  - model.allow_pickle: true would unpickle the base model's .bin weights ({tiny_llama_dir}); pass "
            "--allow-pickle if you trust those files\n") in capsys.readouterr().err
    assert run_cli(["chat", str(run), "-q", "What is asthma?", "--allow-pickle"]) == 0
