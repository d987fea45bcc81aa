"""Ollama export: the Modelfile's TEMPLATE renders a conversation exactly as the chat template does
(ChatML for SmolLM2, Phi-4-mini's <|system|>...<|end|>), with SYSTEM and stop parameters from the run."""

from __future__ import annotations

import re

import pytest

from export.export_runs import tiny_run
from export.gguf_parse_cache import gguf_parsed_once
from export.go_template import render_go_template
from lorakit.export.ollama import go_template, turn_format
from lorakit.export.run_export import ExportRequest, export_run
from lorakit.export.stop_tokens import end_of_turn_token
from lorakit.run.source import read_finished_run

# Phi-4-mini-instruct's chat template (tools branch left out), on the fixture vocabulary plus its tokens.
PHI4_TEMPLATE = ("{% for message in messages %}{{'<|' + message['role'] + '|>' + message['content'] + '<|end|>'}}"
                 "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}")
CONVERSATION = [{"role": "system", "content": "Be careful.\nAlways."}, {"role": "user", "content": "What is a fever?"},
                {"role": "assistant", "content": "A raised body temperature."},
                {"role": "user", "content": "And a cough?"}]


def _phi4_tokenizer(tokenizer):
    phi = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    phi.add_special_tokens({"additional_special_tokens": ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]})
    phi.chat_template = PHI4_TEMPLATE
    return phi


@pytest.mark.parametrize("style", ["chatml", "phi4"])
def test_go_template_renders_like_the_chat_template(style, tokenizer):
    tok = tokenizer if style == "chatml" else _phi4_tokenizer(tokenizer)
    end_of_turn = end_of_turn_token(tok)[0]
    assert end_of_turn == {"chatml": "<|im_end|>", "phi4": "<|end|>"}[style]
    template = go_template(turn_format(tok, end_of_turn))
    for turns in (2, 4):
        messages = CONVERSATION[:turns] if turns == 4 else [CONVERSATION[0], CONVERSATION[1]]
        expected = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert render_go_template(template, messages) == expected
    if style == "phi4":
        assert render_go_template(template, CONVERSATION[:2]) == \
            "<|system|>Be careful.\nAlways.<|end|><|user|>What is a fever?<|end|><|assistant|>"


def test_template_that_rewrites_content_is_refused(tokenizer):
    tok = _phi4_tokenizer(tokenizer)
    tok.chat_template = "{% for m in messages %}{{ m['content'] | upper }}<|end|>{% endfor %}"
    with pytest.raises(ValueError, match="drops or rewrites message content"):
        turn_format(tok, "<|end|>")


def test_ollama_export_folder(tiny_llama_dir, tmp_path_factory, tmp_path):
    run_dir = tiny_run(tiny_llama_dir, tmp_path_factory.mktemp("train-llama"), tmp_path / "run")
    with gguf_parsed_once():  # the fidelity read-back's config and weight loaders share one parse of the file
        result = export_run(run_dir, ExportRequest("ollama", quant="q8_0"))
    assert result.files == ["Modelfile", "README.md", "lorakit_export.json", "run-q8_0.gguf"]
    modelfile = (result.output / "Modelfile").read_text()
    assert "\nFROM ./run-q8_0.gguf\n" in modelfile
    assert '\nSYSTEM """Be careful."""\n' in modelfile
    assert re.findall(r'^PARAMETER stop "(.*)"$', modelfile, re.M) == ["<|im_end|>"]
    inference = read_finished_run(run_dir).config.inference
    assert re.findall(r"^PARAMETER (?!stop)(\S+) (.*)$", modelfile, re.M) == [
        ("temperature", "0"), ("top_p", "0.9"), ("top_k", "0"), ("min_p", "0"),
        ("repeat_penalty", f"{inference.repetition_penalty:g}"), ("repeat_last_n", "64")]
    template = re.search(r'^TEMPLATE """(.*?)"""$', modelfile, re.M | re.S).group(1)
    messages = [{"role": "system", "content": "Be careful."}, *CONVERSATION[1:]]
    from transformers import AutoTokenizer

    expected = AutoTokenizer.from_pretrained(tiny_llama_dir).apply_chat_template(messages, tokenize=False,
                                                                                 add_generation_prompt=True)
    assert render_go_template(template, messages) == expected
