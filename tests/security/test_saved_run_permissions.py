"""A run folder can come from anyone (a download, a colleague's copy): the config.yaml saved in it may ask for the
base model's own Python code or pickled weights, but only the person running chat/eval/serve/export grants them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import tiny_run_config, write_qa_jsonl
from lorakit.cli.app import run_cli
from lorakit.training.loop import train
from test_secrets_and_trust import _with_custom_code


@pytest.fixture
def planted_run(tiny_llama_dir, tmp_path) -> tuple[Path, Path]:
    """A finished run whose saved config was edited to load a base model with code that leaves a marker file."""
    run = train(tiny_run_config(tiny_llama_dir, write_qa_jsonl(tmp_path / "qa.jsonl"), tmp_path / "run",
                                max_steps=1, eval_steps=1, save_steps=1)).run_dir
    marker = tmp_path / "marker"
    custom = _with_custom_code(tiny_llama_dir, tmp_path / "custom", marker, "model")
    modeling = custom / "modeling_custom.py"  # loadable once allowed: the model class names its config class
    modeling.write_text(modeling.read_text().replace("    pass\n", "    config_class = CustomConfig\n").replace(
        "class CustomModel", "from .configuration_custom import CustomConfig\n\nclass CustomModel"))
    saved = run / "final" / "config.yaml"
    config = yaml.safe_load(saved.read_text())
    config["model"].update(name=str(custom), trust_remote_code=True)
    saved.write_text(yaml.safe_dump(config))
    return run, marker


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


def test_a_saved_config_cannot_turn_on_pickle_loading(tiny_llama_dir, tmp_path, capsys):
    run = train(tiny_run_config(tiny_llama_dir, write_qa_jsonl(tmp_path / "qa.jsonl"), tmp_path / "run",
                                max_steps=1, eval_steps=1, save_steps=1)).run_dir
    saved = run / "final" / "config.yaml"
    config = yaml.safe_load(saved.read_text())
    config["model"]["allow_pickle"] = True
    saved.write_text(yaml.safe_dump(config))
    assert run_cli(["chat", str(run), "-q", "What is asthma?"]) == 2
    assert (f"  - model.allow_pickle: true would unpickle the base model's .bin weights ({tiny_llama_dir}); pass "
            "--allow-pickle if you trust those files\n") in capsys.readouterr().err
    assert run_cli(["chat", str(run), "-q", "What is asthma?", "--allow-pickle"]) == 0


def test_a_damaged_manifest_is_an_error_naming_it(tiny_llama_dir, tmp_path, capsys):
    run = train(tiny_run_config(tiny_llama_dir, write_qa_jsonl(tmp_path / "qa.jsonl"), tmp_path / "run",
                                max_steps=1, eval_steps=1, save_steps=1)).run_dir
    manifest = run / "final" / "manifest.json"
    manifest.write_text('{"data": {"sha256": "ab"}')
    assert run_cli(["chat", str(run), "-q", "What is asthma?"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {manifest} is damaged: it cannot be read (Expecting ',' delimiter: line 1 column 26")
    assert err.endswith("hint: lorakit wrote this file and it was changed or cut short since: copy the folder again from "
                        "where it was made, or run the command that writes it again.\n")
    manifest.write_text('{"data": {}, "settings": {}}')
    assert run_cli(["export", str(run), "--format", "adapter", "--output", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {manifest} is damaged: it has no ['data']['sha256'].\n")


def test_a_config_that_is_not_utf8_names_the_line(tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_bytes(b"seed: 1\nmodel:\n  name: caf\xe9\n")
    assert run_cli(["plan", str(config)]) == 2
    assert capsys.readouterr().err == (f"error: {config}: 1 config problem:\n"
                                       "  - line 3: not UTF-8 text (byte 0xe9); save the file as UTF-8 in your editor\n")
