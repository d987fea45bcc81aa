"""The tokenized-data cache: a second run does not tokenize; any input that changes tokens changes the key."""

from __future__ import annotations

import pytest

from lorakit.data import token_cache
from lorakit.data.conversation import Conversation, Message
from lorakit.data.render import render_conversation
from lorakit.data.token_cache import cache_key, render_cached

CONVERSATIONS = [
    Conversation((Message("user", f"Question {i}?"), Message("assistant", f"Answer {i}.")), "d.jsonl", i + 1)
    for i in range(5)
]


def test_second_call_loads_from_cache_without_tokenizing(tokenizer, tmp_path, monkeypatch):
    first = render_cached(CONVERSATIONS, tokenizer, "Be brief.", 64, cache_dir=tmp_path)
    assert first == [render_conversation(c, tokenizer, "Be brief.", 64) for c in CONVERSATIONS]
    assert len(list(tmp_path.glob("*.npz"))) == 1

    def must_not_tokenize(*args, **kwargs):
        raise AssertionError("tokenized again despite the cache")

    monkeypatch.setattr(token_cache, "render_batch", must_not_tokenize)
    assert render_cached(CONVERSATIONS, tokenizer, "Be brief.", 64, cache_dir=tmp_path) == first


def test_default_location_is_under_the_lorakit_cache_root(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("LORAKIT_CACHE_DIR", str(tmp_path))
    render_cached(CONVERSATIONS[:1], tokenizer, "Be brief.", 64)
    assert len(list((tmp_path / "tokenized").glob("*.npz"))) == 1


def test_key_depends_on_data_prompt_length_and_template(tokenizer):
    base = cache_key(CONVERSATIONS, tokenizer, "Be brief.", 64)
    other = Conversation((Message("user", "Other?"), Message("assistant", "A.")), "d.jsonl", 5)
    changed_data = CONVERSATIONS[:4] + [other]
    assert cache_key(CONVERSATIONS, tokenizer, "Be brief.", 64) == base
    assert cache_key(changed_data, tokenizer, "Be brief.", 64) != base
    assert cache_key(CONVERSATIONS, tokenizer, "Be kind.", 64) != base
    assert cache_key(CONVERSATIONS, tokenizer, "Be brief.", 65) != base
    original = tokenizer.chat_template
    try:
        tokenizer.chat_template = original + " "
        assert cache_key(CONVERSATIONS, tokenizer, "Be brief.", 64) != base
    finally:
        tokenizer.chat_template = original


def test_damaged_entry_is_rebuilt_with_a_warning(tokenizer, tmp_path, caplog):
    expected = render_cached(CONVERSATIONS, tokenizer, "Be brief.", 64, cache_dir=tmp_path)
    [entry] = tmp_path.glob("*.npz")
    entry.write_bytes(b"not a zip")
    assert render_cached(CONVERSATIONS, tokenizer, "Be brief.", 64, cache_dir=tmp_path) == expected
    assert "is damaged (ValueError); tokenizing again" in caplog.text
    assert render_cached(CONVERSATIONS, tokenizer, "Be brief.", 64, cache_dir=tmp_path) == expected


@pytest.mark.parametrize("count", [0, 1])
def test_tiny_inputs(tokenizer, tmp_path, count):
    assert len(render_cached(CONVERSATIONS[:count], tokenizer, "", 64, cache_dir=tmp_path)) == count
