"""Issue 22: lone UTF-16 surrogates and invalid UTF-8 are named where they are (file:line:field, option), with
exit code 2, instead of a TypeError from the tokenizer; `train` that fails leaves no run folder behind."""

from __future__ import annotations

import json

import pytest

from conftest import TOKENIZER_DIR, tiny_run_config, write_config_file
from lorakit.cli.app import run_cli

SURROGATE_LINE = '{"instruction": "What is BP?", "response": "Blood \\ud800 pressure."}\n'  # the escape, as written


def _bad_data(path):
    good = json.dumps({"instruction": "What is HR?", "response": "Heart rate."}) + "\n"
    path.write_text(good + SURROGATE_LINE)
    return path


def test_data_check_with_a_tokenizer_names_the_lone_surrogate(tmp_path, capsys):
    data = _bad_data(tmp_path / "qa.jsonl")
    assert run_cli(["data", "check", str(data), "--tokenizer", str(TOKENIZER_DIR)]) == 2
    out = capsys.readouterr().out
    assert (f"{data}:2: error: field 'response': character 7 is a lone UTF-16 surrogate (\\ud800) without its pair, "
            "which is not text") in out
    assert "1 valid examples; 1 error(s)" in out


def test_train_on_a_lone_surrogate_is_a_data_error_and_leaves_no_run_folder(tiny_llama_dir, tmp_path, capsys):
    config = write_config_file(tmp_path, tiny_llama_dir, seed=1, training={"batch_size": 2, "max_steps": 2})
    _bad_data(tmp_path / "qa.jsonl")
    assert run_cli(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'qa.jsonl'}:2: error: field 'response': character 7 is a lone UTF-16 surrogate" in err
    assert not (tmp_path / "run").exists()


def test_train_that_fails_on_a_bug_leaves_no_run_folder_holding_its_lock(tiny_llama_dir, qa_file, tmp_path,
                                                                         monkeypatch):
    from lorakit.training import loop, session

    def broken(*args):
        raise TypeError("a bug before anything was written")

    monkeypatch.setattr(session, "prepare_data", broken)
    with pytest.raises(TypeError):
        loop.train(tiny_run_config(tiny_llama_dir, qa_file, tmp_path / "runs" / "run"))
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("question", "problem"), [
    ("What is \udcff?", "byte 0xFF at character 9 is not UTF-8"),  # how Python passes an undecodable argv byte
    ("What is \ud800?", "character 9 is a lone UTF-16 surrogate (\\ud800) without its pair, which is not text"),
])
def test_chat_question_that_is_not_text_is_a_usage_error(tmp_path, capsys, question, problem):
    assert run_cli(["chat", str(tmp_path / "no-run"), "--question", question]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"Invalid value: --question is not text: {problem}. Pass the question as UTF-8." in err
