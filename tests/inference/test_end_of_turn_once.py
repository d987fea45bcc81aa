"""The chat template's end-of-turn token is located once per tokenizer (data/chat_template.py), not once per
answer: generation asks for its stop ids on every answer, and the probe renders a whole conversation."""

from __future__ import annotations

import copy
import gc

import pytest
import torch

from conftest import tiny_run_config
from lorakit.data import chat_template
from lorakit.data.chat_spans import AnswerSpanError
from lorakit.data.chat_template import end_of_turn_token
from lorakit.data.records import Message
from lorakit.inference.generate import GenerationSettings, LoadedRun, generate_answer, generate_answers, stream_answer

SETTINGS = GenerationSettings(max_new_tokens=3, temperature=0.0, repetition_penalty=1.0)
QUESTIONS = [(Message("user", "What is insulin?"),), (Message("user", "Fever?"),), (Message("user", "And chills?"),)]


@pytest.fixture
def probes(monkeypatch):
    """The tokenizers the end-of-turn probe was rendered for, one entry per rendering."""
    rendered = []
    locate = chat_template.locate_answers

    def counting(tokenizer, batch):
        rendered.append(tokenizer)
        return locate(tokenizer, batch)

    monkeypatch.setattr(chat_template, "locate_answers", counting)
    return rendered


def test_the_probe_renders_once_per_tokenizer_across_several_answers(tiny_llama_dir, qa_file, tmp_path, probes):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    config = tiny_run_config(tiny_llama_dir, qa_file, tmp_path / "run")
    run = LoadedRun(model, tokenizer, config, None, torch.device("cpu"))
    for question in QUESTIONS:
        generate_answer(run, question, SETTINGS)
    assert len(generate_answers(run, QUESTIONS, SETTINGS, batch_size=2)) == 3
    ended = []
    list(stream_answer(run, QUESTIONS[0], SETTINGS, on_end=ended.append))
    assert len(ended) == 1
    assert probes == [tokenizer]

    other = copy.deepcopy(tokenizer)  # another tokenizer object is probed on its own
    generate_answer(LoadedRun(model, other, config, None, torch.device("cpu")), QUESTIONS[0], SETTINGS)
    assert probes == [tokenizer, other]


def test_a_changed_template_or_new_special_tokens_are_probed_again(tokenizer_dir, probes):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert end_of_turn_token(tokenizer) == end_of_turn_token(tokenizer) == "<|im_end|>"
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]})
    assert end_of_turn_token(tokenizer) == "<|im_end|>"
    tokenizer.chat_template = chat_template.read_chat_template("phi4")[1]
    assert end_of_turn_token(tokenizer) == end_of_turn_token(tokenizer) == "<|end|>"
    assert len(probes) == 3


def test_a_template_whose_answers_cannot_be_located_is_probed_once_and_refused_every_time(tokenizer_dir, probes):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.chat_template = chat_template.read_chat_template("llama3")[1]  # its markers are not special here
    for _ in range(2):
        with pytest.raises(AnswerSpanError, match="followed by one end-of-turn special token"):
            end_of_turn_token(tokenizer)
    assert len(probes) == 1


def test_the_cached_answer_goes_with_its_tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    end_of_turn_token(tokenizer)
    key = id(tokenizer)
    assert key in chat_template._END_OF_TURN
    del tokenizer
    gc.collect()
    assert key not in chat_template._END_OF_TURN
