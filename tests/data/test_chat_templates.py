"""Masks under three real chat templates (ChatML/SmolLM2, Phi-4-mini, Qwen3), single- and multi-turn.

Every supervised run must decode to exactly one answer plus its end-of-turn token, and a template whose
rendering cannot be masked that way must be refused with the file:line and the template named.
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import pytest

from lorakit.data.conversation import Conversation, Message
from lorakit.data.masking import IGNORE_INDEX
from lorakit.data.render import render_batch, render_conversation, render_prompt_ids
from lorakit.errors import DataError

TEMPLATES = Path(__file__).resolve().parents[1] / "fixtures" / "chat_templates"
PHI4_SPECIALS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]  # special in Phi-4-mini's own tokenizer

SINGLE = Conversation((Message("user", "What is BP?"), Message("assistant", "Blood pressure.")), "f.jsonl", 3)
MULTI = Conversation((Message("user", "Hi"), Message("assistant", "Hello."), Message("user", "And BP?"),
                      Message("assistant", "Blood pressure.")), "f.jsonl", 4)


def with_template(tokenizer, name: str | None, specials: list[str] = ()):
    """A copy of the fixture tokenizer with a real template (None: its own ChatML) and extra special tokens."""
    copied = copy.deepcopy(tokenizer)
    if name is not None:
        copied.chat_template = (TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8")
        copied.name_or_path = f"{name}-on-smollm2"
    if specials:
        copied.add_special_tokens({"additional_special_tokens": list(specials)})
    return copied


def supervised_runs(example, tokenizer) -> list[str]:
    """The decoded text of each contiguous run of supervised tokens."""
    runs, current = [], []
    for token, label in zip(example.input_ids, example.labels):
        assert label in (IGNORE_INDEX, token)
        if label != IGNORE_INDEX:
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current)), current.clear()
    return runs + ([tokenizer.decode(current)] if current else [])


CASES = {
    "chatml": (None, [], "<|im_end|>", {
        SINGLE: "<|im_start|>system\nBe safe.<|im_end|>\n<|im_start|>user\nWhat is BP?<|im_end|>\n"
                "<|im_start|>assistant\nBlood pressure.<|im_end|>\n",
        MULTI: "<|im_start|>system\nBe safe.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
               "Hello.<|im_end|>\n<|im_start|>user\nAnd BP?<|im_end|>\n<|im_start|>assistant\n"
               "Blood pressure.<|im_end|>\n"}),
    # Phi-4-mini ends a conversation with eos after the last <|end|> (the fixture's eos is <|im_end|>): the
    # old prefix-based spans reached past <|end|> by that eos's length, into "<|user|>And" of the next turn.
    "phi4_mini_instruct": ("phi4_mini_instruct", PHI4_SPECIALS, "<|end|>", {
        SINGLE: "<|system|>Be safe.<|end|><|user|>What is BP?<|end|><|assistant|>Blood pressure.<|end|><|im_end|>",
        MULTI: "<|system|>Be safe.<|end|><|user|>Hi<|end|><|assistant|>Hello.<|end|><|user|>And BP?<|end|>"
               "<|assistant|>Blood pressure.<|end|><|im_end|>"}),
    # Qwen3 writes an empty think block before the last answer only: earlier answers are rendered differently,
    # so prefix-measured spans used to cover "Hello.<|im_end|>\n<|im_start|>user\nAnd".
    "qwen3": ("qwen3", [], "<|im_end|>", {
        SINGLE: "<|im_start|>system\nBe safe.<|im_end|>\n<|im_start|>user\nWhat is BP?<|im_end|>\n"
                "<|im_start|>assistant\n<think>\n\n</think>\n\nBlood pressure.<|im_end|>\n",
        MULTI: "<|im_start|>system\nBe safe.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
               "Hello.<|im_end|>\n<|im_start|>user\nAnd BP?<|im_end|>\n<|im_start|>assistant\n"
               "<think>\n\n</think>\n\nBlood pressure.<|im_end|>\n"}),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("turns", ["single", "multi"])
def test_each_answer_and_its_end_of_turn_token_are_exactly_what_is_supervised(tokenizer, case, turns):
    name, specials, end_of_turn, texts = CASES[case]
    templated = with_template(tokenizer, name, specials)
    conversation = SINGLE if turns == "single" else MULTI
    [example] = render_batch([conversation], templated, "Be safe.", 512)
    assert templated.decode(example.input_ids) == texts[conversation]
    answers = [m.content for m in conversation.messages if m.role == "assistant"]
    assert supervised_runs(example, templated) == [answer + end_of_turn for answer in answers]
    assert example.labels[-1] == IGNORE_INDEX or example.input_ids[-1] == templated.convert_tokens_to_ids(end_of_turn)


@pytest.mark.parametrize("case", CASES)
def test_training_prompt_is_the_chat_prompt(tokenizer, case):
    """Chat sends, for the same question, the text before the first supervised token: with Qwen3 that includes
    the empty think block its template writes before a last answer (context, never a target)."""
    name, specials, _, _ = CASES[case]
    templated = with_template(tokenizer, name, specials)
    example = render_conversation(SINGLE, templated, "Be safe.", 512)
    first = next(i for i, label in enumerate(example.labels) if label != IGNORE_INDEX)
    prompt = render_prompt_ids(SINGLE.messages[:1], templated, "Be safe.")
    assert templated.decode(prompt) == templated.decode(example.input_ids[:first])
    think = "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert templated.decode(prompt).endswith(think) == (case == "qwen3")


def template_sha(tokenizer) -> str:
    return hashlib.sha256(tokenizer.chat_template.encode()).hexdigest()[:12]


def test_phi4_template_without_its_special_tokens_is_refused_naming_file_line_and_template(tokenizer):
    """Without <|end|> as a special token the answer ends in plain text the model could never stop on."""
    templated = with_template(tokenizer, "phi4_mini_instruct")
    with pytest.raises(DataError) as caught:
        render_batch([MULTI], templated, "Be safe.", 512)
    assert str(caught.value).splitlines()[0] == (
        f"f.jsonl:4: the chat template of 'phi4_mini_instruct-on-smollm2' (sha256 {template_sha(templated)}) "
        "cannot be masked exactly: answer 1: the template does not write the answer's text followed by one "
        "end-of-turn special token (it writes 'Hello.<|end|><|im_end|>'); training on it would teach the model "
        "tokens that are not the answer")


def test_qwen3_history_that_drops_reasoning_is_refused_not_mislabelled(tokenizer):
    """Qwen3 strips <think>...</think> from answers; an answer that carries reasoning is refused, exactly."""
    templated = with_template(tokenizer, "qwen3")
    reasoning = Conversation((Message("user", "Hi"), Message("assistant", "<think>greet</think>Hello."),
                              Message("user", "And BP?"), Message("assistant", "Blood pressure.")), "f.jsonl", 7)
    plain = MULTI
    with pytest.raises(DataError) as caught:
        render_batch([plain, reasoning], templated, "Be safe.", 512)
    assert str(caught.value) == (
        f"f.jsonl:7: the chat template of 'qwen3-on-smollm2' (sha256 {template_sha(templated)}) cannot be masked "
        "exactly: answer 1: the template does not write the answer's text followed by one end-of-turn special "
        "token (it writes '<think>\\ngreet\\n</think>\\n\\nHello.<|im_end|>\\n'); training on it would teach the "
        "model tokens that are not the answer\n"
        "lorakit supervises exactly each answer's text and its end-of-turn token, and checks that it does. Remove "
        "reasoning blocks (<think>...</think>) from the answers, or use a chat template that writes every assistant "
        "turn the same way wherever it appears in a conversation.")


def test_the_refusal_names_every_conversation_of_the_batch_that_fails(tokenizer):
    templated = with_template(tokenizer, "qwen3")
    reasoning = [Conversation((Message("user", "Hi"), Message("assistant", "<think>greet</think>Hello.")),
                              "f.jsonl", line) for line in (8, 10, 11)]
    with pytest.raises(DataError) as caught:
        render_batch([SINGLE, reasoning[0], MULTI, *reasoning[1:]], templated, "Be safe.", 512)
    assert str(caught.value).splitlines()[0].startswith("f.jsonl:8: the chat template of 'qwen3-on-smollm2'")
    assert str(caught.value).splitlines()[0].endswith(
        "tokens that are not the answer (also 2 more conversations rendered with it: f.jsonl:10, f.jsonl:11)")


def test_template_whose_generation_prompt_is_not_how_history_reads_is_refused(tokenizer):
    """A template whose generation prompt differs from how the same turn reads in history (DeepSeek-R1 style:
    `<｜Assistant｜><think>\\n` to generate, no think block in history) cannot give an answer its chat prompt."""
    templated = with_template(tokenizer, None)
    templated.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'assistant' %}{{ '<|im_start|>A:' + m['content'] + '<|im_end|>' }}"
        "{% else %}{{ '<|im_start|>' + m['content'] + '<|im_end|>' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>A:<think>\\n' }}{% endif %}")
    templated.name_or_path = "r1-style"
    with pytest.raises(DataError) as caught:
        render_batch([SINGLE], templated, "", 512)
    assert str(caught.value).splitlines()[0] == (
        f"f.jsonl:3: the chat template of 'r1-style' (sha256 {template_sha(templated)}) cannot be masked exactly: "
        "answer 1: the whole conversation does not begin with this answer's chat prompt (the turns before it plus "
        "the generation prompt): the template writes earlier turns or the generation prompt differently once the "
        "conversation goes on; training on it would teach the model tokens that are not the answer")


def test_a_token_that_crosses_the_edge_of_an_answer_is_refused(tokenizer):
    """Text-level spans are right, but the header's "\\n" and the answer's first "\\n" merge into one token that
    begins in the prompt: the supervised tokens would lose the answer's first character."""
    templated = with_template(tokenizer, None)
    conversation = Conversation((Message("user", "Q"), Message("assistant", "\n\nA")), "f.jsonl", 9)
    with pytest.raises(DataError) as caught:
        render_batch([conversation], templated, "", 512)
    assert "answer 1: its supervised tokens decode to '\\nA<|im_end|>', not '\\n\\nA<|im_end|>'" in str(caught.value)
