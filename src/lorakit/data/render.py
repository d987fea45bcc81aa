"""Render conversations with the tokenizer's own chat template into token ids and loss labels.

This is the only place a system prompt is added, and it serves training and chat alike, so the two can
never disagree. There is one renderer: `render_conversation` is `render_batch` of one conversation. Answers
are located by `chat_spans` (checked on the text), and after encoding the supervised tokens of every answer
are decoded and compared with its text plus end-of-turn token, so a label can never spill into a prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lorakit.data.batch_encode import encode_texts, system_prefixes
from lorakit.data.chat_spans import AnswerSpanError, answer_lead, apply_template, locate_answers, template_name
from lorakit.data.conversation import Conversation, Message
from lorakit.data.masking import IGNORE_INDEX, labels_from_spans, span_token_ranges
from lorakit.errors import DataError

__all__ = ["TokenizedExample", "with_system_prompt", "render_batch", "render_conversation", "render_prompt_ids",
           "count_tokens", "prompt_token_counts"]

_MASK_HINT = ("lorakit supervises exactly each answer's text and its end-of-turn token, and checks that it does. "
              "Remove reasoning blocks (<think>...</think>) from the answers, or use a chat template that writes "
              "every assistant turn the same way wherever it appears in a conversation.")


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


_LISTED_OTHERS = 20


def _mask_error(conversations: Sequence[Conversation], tokenizer, problems: list[AnswerSpanError]) -> DataError:
    """One DataError at the first conversation that cannot be masked, naming the others of its batch too."""
    first = conversations[problems[0].index]
    others = [f"{conversations[p.index].source}:{conversations[p.index].line}" for p in problems[1:]]
    also = ""
    if others:
        listed = ", ".join(others[:_LISTED_OTHERS]) + (" ..." if len(others) > _LISTED_OTHERS else "")
        also = f" (also {len(others)} more conversation{'s' if len(others) > 1 else ''} rendered with it: {listed})"
    return DataError(first.source, first.line, None,
                     f"{template_name(tokenizer)} cannot be masked exactly: answer {problems[0].answer}: "
                     f"{problems[0].reason}; training on it would teach the model tokens that are not the answer"
                     f"{also}", hint=_MASK_HINT)


def render_batch(
    conversations: Sequence[Conversation], tokenizer, system_prompt: str, max_length: int
) -> list[TokenizedExample]:
    """Token ids and labels of each conversation: assistant answers and their end-of-turn token supervised,
    everything else -100. Raises DataError (file:line, template) when an answer cannot be located exactly."""
    if not tokenizer.is_fast:
        raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer: token offsets are needed for the mask")
    batch = [with_system_prompt(c.messages, system_prompt) for c in conversations]
    rendered = locate_answers(tokenizer, batch)
    problems = [chat for chat in rendered if isinstance(chat, AnswerSpanError)]
    if problems:
        raise _mask_error(conversations, tokenizer, problems)
    encoded = encode_texts(tokenizer, [chat.text for chat in rendered], system_prefixes(tokenizer, batch), offsets=True)
    spans = [[(answer.start, answer.end) for answer in chat.answers] for chat in rendered]
    _check_supervised_tokens(conversations, tokenizer, rendered, encoded, spans)
    examples = []
    for conversation, (input_ids, token_starts), conversation_spans in zip(conversations, encoded, spans):
        labels = labels_from_spans(input_ids, token_starts, conversation_spans)
        examples.append(TokenizedExample(
            input_ids=input_ids[:max_length],
            labels=labels[:max_length],
            truncated=len(input_ids) > max_length,
            source=conversation.source,
            line=conversation.line,
        ))
    return examples


def _check_supervised_tokens(conversations, tokenizer, rendered, encoded, spans) -> None:
    """Decode the tokens each answer supervises and compare them with the answer's text + end-of-turn token
    (a token that crosses the edge of an answer would otherwise train on prompt text, or lose answer text)."""
    runs, owners = [], []
    for owner, ((input_ids, token_starts), conversation_spans) in enumerate(zip(encoded, spans)):
        for number, (first, last) in enumerate(span_token_ranges(token_starts, conversation_spans), start=1):
            runs.append(input_ids[first:last])
            owners.append((owner, number))
    decoded = tokenizer.backend_tokenizer.decode_batch(runs, skip_special_tokens=False)
    problems: dict[int, AnswerSpanError] = {}
    for (owner, number), text in zip(owners, decoded):
        expected = rendered[owner].answers[number - 1].expected
        if text != expected and owner not in problems:
            problems[owner] = AnswerSpanError(owner, number, f"its supervised tokens decode to {text!r}, not "
                                              f"{expected!r} (a token crosses the edge of the answer)")
    if problems:
        raise _mask_error(conversations, tokenizer, list(problems.values()))


def render_conversation(
    conversation: Conversation, tokenizer, system_prompt: str, max_length: int
) -> TokenizedExample:
    """Token ids and labels of one conversation (see `render_batch`)."""
    return render_batch([conversation], tokenizer, system_prompt, max_length)[0]


def render_prompt_ids(messages: tuple[Message, ...], tokenizer, system_prompt: str) -> list[int]:
    """Token ids of a conversation ending in a user turn, followed by the assistant header and whatever the
    template writes before a last answer: exactly the context training gave its last answers (for generation)."""
    chat = with_system_prompt(messages, system_prompt)
    [text] = apply_template(tokenizer, [chat], add_generation_prompt=True)
    return list(tokenizer(text + answer_lead(tokenizer, chat, text), add_special_tokens=False)["input_ids"])


def count_tokens(conversations: Sequence[Conversation], tokenizer, system_prompt: str) -> list[int]:
    """Tokens in each rendered conversation (system prompt and template included), as training sees it."""
    batch = [with_system_prompt(c.messages, system_prompt) for c in conversations]
    texts = apply_template(tokenizer, batch, add_generation_prompt=False)
    if not tokenizer.is_fast:
        return [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts]
    return [len(ids) for ids, _ in encode_texts(tokenizer, texts, system_prefixes(tokenizer, batch), offsets=False)]


def prompt_token_counts(conversations: Sequence[Conversation], tokenizer, system_prompt: str) -> list[int]:
    """Tokens before the first assistant answer of each conversation (where training targets begin)."""
    prefixes = []
    for conversation in conversations:
        messages = with_system_prompt(conversation.messages, system_prompt)
        first_answer = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
        prefixes.append(messages[:first_answer])
    texts = apply_template(tokenizer, prefixes, add_generation_prompt=True)
    return [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts]
