"""Batched decoding (inference/decode.py through generate_answers) against one-at-a-time `model.generate`."""

import pytest
import torch

from evaluation.eval_runs import trained_tiny_run
from lorakit.data.records import Message
from lorakit.inference.generate import GenerationSettings, generate_answer, generate_answers, load_run

SETTINGS = GenerationSettings(max_new_tokens=10, temperature=0.0, repetition_penalty=1.1)
# Prompts of different lengths (one multi-turn), so that the batch is left-padded.
CONVERSATIONS = [
    (Message("user", "What is insulin?"),),
    (Message("user", "My grandmother has had a persistent dry cough for three weeks and now a mild fever. "
                     "What could cause that, and when should she see a doctor?"),),
    (Message("user", "Fever?"), Message("assistant", "A raised body temperature."), Message("user", "And chills?")),
    (Message("user", "What do kidneys do all day long?"),),
]


@pytest.fixture(scope="module")
def run(tiny_llama_dir, tmp_path_factory):
    return load_run(trained_tiny_run(tiny_llama_dir, tmp_path_factory.getbasetemp() / "eval-workspace"))


def _one_at_a_time(run, which, settings=SETTINGS):
    with run.model.disable_adapter() if which == "base" else torch.no_grad():
        return [tuple(generate_answer(run, c, settings)[1]) for c in CONVERSATIONS]


@pytest.mark.parametrize("mixed,batch_size", [(True, 3), (False, 8)],
                         ids=["base-and-tuned-share-batches-of-3", "one-model-per-batch-of-8"])
def test_batched_greedy_answers_equal_one_at_a_time_generate(run, mixed, batch_size):
    expected = _one_at_a_time(run, "tuned") + _one_at_a_time(run, "base")
    assert expected[:4] != expected[4:], "the adapter changes the answers, so a mix-up would show"
    answers = generate_answers(run, CONVERSATIONS * 2, SETTINGS, models=["tuned"] * 4 + ["base"] * 4,
                               batch_size=batch_size, mixed_batches=mixed)
    assert [a.token_ids for a in answers] == expected
    assert [a.text for a in answers] == [run.tokenizer.decode(list(ids), skip_special_tokens=True).strip()
                                         for ids in expected]


def test_each_row_stops_at_its_own_end_of_turn_and_the_rest_go_on(run, monkeypatch):
    """Make a token that the first answer says early (and the second never says) an end-of-turn token: the
    first row must stop there while the others run to max_new_tokens, exactly as one-at-a-time generate does."""
    free = _one_at_a_time(run, "tuned")
    stop = next(token for token in free[0][1:] if token not in free[1])
    monkeypatch.setattr(run.model.generation_config, "eos_token_id", [run.tokenizer.eos_token_id, stop])
    expected = _one_at_a_time(run, "tuned")
    answers = generate_answers(run, CONVERSATIONS, SETTINGS, batch_size=4)
    assert [a.token_ids for a in answers] == expected
    assert answers[0].finish_reason == "stop" and answers[0].token_ids[-1] == stop and not answers[0].truncated
    assert len(answers[0].token_ids) < SETTINGS.max_new_tokens
    assert answers[1].finish_reason == "length" and answers[1].truncated
    assert len(answers[1].token_ids) == SETTINGS.max_new_tokens
