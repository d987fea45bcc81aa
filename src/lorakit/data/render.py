"""Render a conversation with the tokenizer's own chat template into token ids and loss labels.

This is the only place a system prompt is added, and it serves training and chat alike, so the two can
never disagree. Templates rarely carry `{% generation %}` markers, so the assistant mask is derived by
rendering each prefix of the conversation and locating assistant text by character offsets.
"""

from __future__ import annotations

from dataclasses import dataclass

from lorakit.data.masking import IGNORE_INDEX, labels_from_spans
from lorakit.data.records import Conversation, Message

__all__ = ["TokenizedExample", "with_system_prompt", "render_conversation", "render_prompt_ids"]


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False
    source: str = "<memory>"
    line: int = 0

    @property
    def trained_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def with_system_prompt(messages: tuple[Message, ...], system_prompt: str) -> list[dict[str, str]]:
    """Chat-template messages with our system prompt first, unless the conversation brings its own."""
    rendered = [{"role": m.role, "content": m.content} for m in messages]
    if system_prompt and (not rendered or rendered[0]["role"] != "system"):
        rendered.insert(0, {"role": "system", "content": system_prompt})
    return rendered


def _template_text(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _assistant_spans(tokenizer, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """Full text and the [start, end) character spans of each assistant turn, end-of-turn token included."""
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _template_text(tokenizer, messages[:index], add_generation_prompt=True)
        after = _template_text(tokenizer, messages[: index + 1], add_generation_prompt=False)
        if not after.startswith(before):
            raise ValueError("chat template does not render conversation prefixes as prefixes; cannot mask")
        # Trailing whitespace after the end-of-turn token is formatting, not something the model must emit.
        spans.append((len(before), len(after.rstrip())))
    return _template_text(tokenizer, messages, add_generation_prompt=False), spans


def render_conversation(
    conversation: Conversation, tokenizer, system_prompt: str, max_length: int
) -> TokenizedExample:
    """Token ids and labels: assistant tokens (and their end-of-turn token) supervised, all else -100."""
    messages = with_system_prompt(conversation.messages, system_prompt)
    text, spans = _assistant_spans(tokenizer, messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = list(encoded["input_ids"])
    labels = labels_from_spans(input_ids, [start for start, _ in encoded["offset_mapping"]], spans)
    truncated = len(input_ids) > max_length
    return TokenizedExample(
        input_ids=input_ids[:max_length],
        labels=labels[:max_length],
        truncated=truncated,
        source=conversation.source,
        line=conversation.line,
    )


def render_prompt_ids(messages: tuple[Message, ...], tokenizer, system_prompt: str) -> list[int]:
    """Token ids of a conversation ending in a user turn, followed by the assistant header (for generation)."""
    text = _template_text(tokenizer, with_system_prompt(messages, system_prompt), add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
