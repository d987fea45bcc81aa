"""Exact labels for rendered conversations: only assistant tokens and their end-of-turn token are trained."""

from lorakit.data.masking import IGNORE_INDEX
from lorakit.data.records import Conversation, Message
from lorakit.data.render import render_conversation, render_prompt_ids


def test_exact_label_mask_single_turn(tokenizer):
    conversation = Conversation((Message("user", "What is BP?"), Message("assistant", "Blood pressure.")))
    example = render_conversation(conversation, tokenizer, "Be safe.", max_length=512)

    expected_text = (
        "<|im_start|>system\nBe safe.<|im_end|>\n<|im_start|>user\nWhat is BP?<|im_end|>\n"
        "<|im_start|>assistant\nBlood pressure.<|im_end|>\n"
    )
    assert tokenizer.decode(example.input_ids) == expected_text
    answer_ids = tokenizer("Blood pressure.", add_special_tokens=False)["input_ids"]
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end_of_turn == tokenizer.pad_token_id == tokenizer.eos_token_id  # the trap this mask must survive
    supervised = answer_ids + [end_of_turn]
    prefix = len(example.input_ids) - len(supervised) - 1  # the final "\n" after <|im_end|> is not trained
    assert example.labels == [IGNORE_INDEX] * prefix + supervised + [IGNORE_INDEX]


def test_multi_turn_supervises_every_assistant_turn_and_no_user_turn(tokenizer):
    conversation = Conversation((
        Message("user", "Hi"), Message("assistant", "Hello."), Message("user", "Bye"), Message("assistant", "Goodbye."),
    ))
    example = render_conversation(conversation, tokenizer, "", max_length=512)
    trained = [tokenizer.decode([label]) for label in example.labels if label != IGNORE_INDEX]
    assert "".join(trained) == "Hello.<|im_end|>Goodbye.<|im_end|>"
    for label, token in zip(example.labels, example.input_ids):
        assert label in (IGNORE_INDEX, token)


def test_truncation_is_reported_and_keeps_prefix(tokenizer):
    conversation = Conversation((Message("user", "word " * 50), Message("assistant", "ok")))
    example = render_conversation(conversation, tokenizer, "sys", max_length=20)
    full = render_conversation(conversation, tokenizer, "sys", max_length=10_000)
    assert example.truncated and not full.truncated
    assert example.input_ids == full.input_ids[:20]
    assert example.trained_tokens == 0


def test_prompt_ids_match_training_prefix(tokenizer):
    """Chat renders the prompt exactly as training rendered everything before the answer."""
    conversation = Conversation((Message("user", "What is BP?"), Message("assistant", "Blood pressure.")))
    example = render_conversation(conversation, tokenizer, "Be safe.", max_length=512)
    prompt = render_prompt_ids(conversation.messages[:1], tokenizer, "Be safe.")
    first_trained = next(i for i, label in enumerate(example.labels) if label != IGNORE_INDEX)
    assert example.input_ids[:first_trained] == prompt
