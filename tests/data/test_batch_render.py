"""`render_batch` (the one renderer) equals `render_conversation`; masks of multi-turn chats token by token."""

from __future__ import annotations

from lorakit.data.formats import parse_record
from lorakit.data.render import count_tokens, prompt_token_counts, render_batch, render_conversation

MULTI_TURN = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                           {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "BP?"},
                           {"role": "assistant", "content": "Blood pressure."}]}
SHAREGPT = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."},
                              {"from": "human", "value": "BP?"}, {"from": "gpt", "value": "Blood pressure."}]}

# (token, supervised): every assistant turn and its end-of-turn token; never system, user or headers.
EXPECTED = [
    ("<|im_start|>", False), ("system", False), ("Ċ", False), ("Be", False), ("Ġbrief", False), (".", False),
    ("<|im_end|>", False), ("Ċ", False),
    ("<|im_start|>", False), ("user", False), ("Ċ", False), ("Hi", False), ("<|im_end|>", False), ("Ċ", False),
    ("<|im_start|>", False), ("ass", False), ("istant", False), ("Ċ", False),
    ("Hello", True), (".", True), ("<|im_end|>", True), ("Ċ", False),
    ("<|im_start|>", False), ("user", False), ("Ċ", False), ("BP", False), ("?", False), ("<|im_end|>", False),
    ("Ċ", False),
    ("<|im_start|>", False), ("ass", False), ("istant", False), ("Ċ", False),
    ("Blood", True), ("Ġpressure", True), (".", True), ("<|im_end|>", True), ("Ċ", False),
]


def conversation(record, format):
    return parse_record(record, format, "f.jsonl", 1).conversation


def token_mask(example, tokenizer):
    tokens = tokenizer.convert_ids_to_tokens(example.input_ids)
    for token_id, label in zip(example.input_ids, example.labels):
        assert label in (-100, token_id)
    return [(token, label != -100) for token, label in zip(tokens, example.labels)]


def test_multi_turn_messages_mask_token_by_token(tokenizer):
    [example] = render_batch([conversation(MULTI_TURN, "messages")], tokenizer, "unused: has its own", 512)
    assert token_mask(example, tokenizer) == EXPECTED


def test_sharegpt_mask_token_by_token_with_the_configured_system_prompt(tokenizer):
    [example] = render_batch([conversation(SHAREGPT, "sharegpt")], tokenizer, "Be brief.", 512)
    assert token_mask(example, tokenizer) == EXPECTED


def test_render_batch_equals_render_conversation(tokenizer):
    records = [
        (MULTI_TURN, "messages"), (SHAREGPT, "sharegpt"),
        ({"instruction": "Qu'est-ce que la pression artérielle ? 血压", "input": "Adulte",
          "response": "Une force 💓."}, "instruction"),
        ({"instruction": "  spaces  ", "output": "tabs\tand\nnew lines\n"}, "alpaca"),
        ({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A " * 80}]}, "messages"),
        ({"messages": [{"role": "system", "content": "Other <|im_end|> prompt."}, {"role": "user", "content": "Q"},
                       {"role": "assistant", "content": "A"}]}, "messages"),
    ]
    conversations = [conversation(record, format) for record, format in records]
    for max_length in (512, 30):
        expected = [render_conversation(c, tokenizer, "Be brief.", max_length) for c in conversations]
        assert render_batch(conversations, tokenizer, "Be brief.", max_length) == expected
    truncated = [e.truncated for e in render_batch(conversations, tokenizer, "Be brief.", 30)]
    assert truncated == [True, True, True, False, True, False]


def test_render_batch_without_system_prompt_equals_render_conversation(tokenizer):
    conversations = [conversation(SHAREGPT, "sharegpt"), conversation(MULTI_TURN, "messages")]
    expected = [render_conversation(c, tokenizer, "", 512) for c in conversations]
    assert render_batch(conversations, tokenizer, "", 512) == expected


def test_counts_match_rendered_lengths(tokenizer):
    conversations = [conversation(MULTI_TURN, "messages"), conversation(SHAREGPT, "sharegpt")]
    assert count_tokens(conversations, tokenizer, "Be brief.") == [38, 38]
    assert prompt_token_counts(conversations, tokenizer, "Be brief.") == [18, 18]  # the first answer starts here
