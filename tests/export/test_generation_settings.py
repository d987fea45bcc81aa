"""What an export recommends reproduces `lorakit chat` (issue 25): the chat template's default system prompt is
the run's, rendered by plain jinja2 as llama-cpp-python and LM Studio render it; the repetition penalty counts
the answer's last repeat_last_n tokens and never the prompt's, as llama.cpp's does."""

from __future__ import annotations

import gguf
import pytest
import torch

from export.jinja_render import render_jinja_template
from lorakit.config import InferenceConfig
from lorakit.export.generation_settings import (
    add_sampling_metadata,
    modelfile_parameters,
    template_with_default_system,
)
from lorakit.inference.decode import AnswerRepetitionPenalty

PROMPT = "You are a careful medical educator.\nSay 'I don't know' when unsure; C:\\ is not a path. {{ not a tag }}"
QUESTION = [{"role": "user", "content": "What is a fever?"}]


def test_template_without_a_system_message_uses_the_runs_prompt(tokenizer):
    original = tokenizer.chat_template
    assert "SmolLM" in render_jinja_template(original, QUESTION)  # the template's own default, before the export changes it
    template = template_with_default_system(original, PROMPT)
    expected = render_jinja_template(original, [{"role": "system", "content": PROMPT}, *QUESTION])
    assert render_jinja_template(template, QUESTION) == expected
    assert expected.startswith(f"<|im_start|>system\n{PROMPT}<|im_end|>\n<|im_start|>user\nWhat is a fever?")
    # A request that brings its own system message is rendered exactly as before.
    own = [{"role": "system", "content": "Be brief."}, *QUESTION]
    assert render_jinja_template(template, own) == render_jinja_template(original, own)
    assert template_with_default_system(original, "") == original


def test_modelfile_parameters_and_gguf_sampling_keys(tmp_path):
    inference = InferenceConfig(temperature=0.0, top_p=0.9, repetition_penalty=1.1, repeat_last_n=64)
    assert modelfile_parameters(inference) == {"temperature": 0.0, "top_p": 0.9, "top_k": 0, "min_p": 0.0,
                                               "repeat_penalty": 1.1, "repeat_last_n": 64}
    writer = gguf.GGUFWriter(tmp_path / "keys.gguf", "llama")
    add_sampling_metadata(writer, inference)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    reader = gguf.GGUFReader(tmp_path / "keys.gguf")
    keys = {k: reader.get_field(k).contents() for k in reader.fields if k.startswith("general.sampling.")}
    assert keys == pytest.approx({"general.sampling.temp": 0.0, "general.sampling.top_p": 0.9,
                                  "general.sampling.top_k": 0, "general.sampling.min_p": 0.0,
                                  "general.sampling.penalty_repeat": 1.1, "general.sampling.penalty_last_n": 64})


def test_repetition_penalty_counts_the_answers_last_tokens_never_the_prompt():
    # Prompt [0, 1], answer [2, 3, 4]; with last_n 2 only 3 and 4 are recent.
    ids = torch.tensor([[0, 1, 2, 3, 4]])
    scores = torch.tensor([[4.0, 4.0, 4.0, 4.0, -4.0, 4.0]])
    assert AnswerRepetitionPenalty(2, 2.0, 64)(ids, scores).tolist() == [[4.0, 4.0, 2.0, 2.0, -8.0, 4.0]]
    assert AnswerRepetitionPenalty(2, 2.0, 2)(ids, scores).tolist() == [[4.0, 4.0, 4.0, 2.0, -8.0, 4.0]]
    assert AnswerRepetitionPenalty(2, 1.0, 64)(ids, scores).tolist() == scores.tolist()
