"""model.chat_template: a shipped name or a Jinja file, checked by the mask's own span check, refused by name when
its turns cannot be located, saved with the adapter, part of the resume check, and its end-of-turn stops chat."""

from __future__ import annotations

import copy

import pytest

from conftest import tiny_run_config
from lorakit.cli.app import run_cli
from lorakit.data.chat_template import apply_chat_template_override, end_of_turn_token, read_chat_template
from lorakit.errors import CheckpointError, ConfigError
from lorakit.training.loop import train


def _with_template(config, value):
    return config.model_copy(update={"model": config.model.model_copy(update={"chat_template": value})})


def test_a_shipped_template_trains_and_is_saved_with_the_adapter(tiny_llama_dir, qa_file, tmp_path):
    config = _with_template(tiny_run_config(tiny_llama_dir, qa_file, tmp_path / "run", max_steps=2), "chatml")
    train(config)
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(tmp_path / "run" / "final")
    assert saved.chat_template == read_chat_template("chatml")[1]
    # no SmolLM2 default system line: the run's system prompt is the only one
    text = saved.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_a_template_whose_markers_are_not_special_tokens_is_refused_by_name(tokenizer):
    local = copy.deepcopy(tokenizer)
    with pytest.raises(ConfigError) as error:
        apply_chat_template_override(local, "llama3")
    [problem] = error.value.problems
    assert problem.startswith(f"the chat template 'llama3' cannot be used with the tokenizer of '{local.name_or_path}': "
                              "answer 1 of a test conversation: the template does not write the answer's text "
                              "followed by one end-of-turn special token")
    assert local.chat_template == tokenizer.chat_template  # left as it was


def test_the_phi4_template_works_once_its_markers_are_special_and_chat_stops_at_its_end_token(tokenizer):
    from lorakit.inference.generate import _stop_token_ids

    local = copy.deepcopy(tokenizer)
    local.add_special_tokens({"additional_special_tokens": ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]})
    apply_chat_template_override(local, "phi4")
    assert end_of_turn_token(local) == "<|end|>"

    class Model:
        class generation_config:  # noqa: N801 - stands in for a model whose config lists only the eos
            eos_token_id = None

    assert local.convert_tokens_to_ids("<|end|>") in _stop_token_ids(Model, local)


def test_a_jinja_file_trains_and_a_changed_file_refuses_resume(tiny_llama_dir, qa_file, tmp_path):
    template = tmp_path / "plain.jinja"
    chatml = read_chat_template("chatml")[1]
    template.write_text(chatml)
    config = _with_template(tiny_run_config(tiny_llama_dir, qa_file, tmp_path / "run", max_steps=2), str(template))
    train(config)
    template.write_text(chatml.replace("'<|im_end|>' + '\n'", "'<|im_end|>' + '\n\n'", 1))  # a blank line between turns
    assert template.read_text() != chatml
    with pytest.raises(CheckpointError, match=r"Cannot resume: model.chat_template changed"):
        train(config, resume=True)


def test_a_missing_file_and_a_broken_template_are_config_errors(tokenizer, tmp_path):
    with pytest.raises(ConfigError) as missing:
        read_chat_template(str(tmp_path / "nope.jinja"))
    assert missing.value.problems == [
        f"'{tmp_path / 'nope.jinja'}' is neither a template lorakit ships (chatml, phi4, llama3) nor a Jinja file "
        f"(looked at {tmp_path / 'nope.jinja'})"]
    broken = tmp_path / "broken.jinja"
    broken.write_text("{% for message in messages %}{{ message['content'] }")
    with pytest.raises(ConfigError, match=r"the chat template '.*broken.jinja' does not render: "):
        apply_chat_template_override(copy.deepcopy(tokenizer), str(broken))


def test_train_cli_refuses_an_unusable_template_with_exit_2(tiny_llama_dir, tmp_path, capsys):
    from conftest import write_config_file

    path = write_config_file(tmp_path, tiny_llama_dir, seed=1, training={"max_steps": 1},
                             model={"name": str(tiny_llama_dir), "max_length": 128, "chat_template": "llama3"})
    assert run_cli(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "error: model.chat_template: 1 config problem:" in err and "the chat template 'llama3' cannot be used" in err
    assert not (tmp_path / "run" / "final").exists()
