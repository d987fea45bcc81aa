"""Where each assistant answer sits in a rendered conversation, located so that labels can never spill.

Few chat templates mark assistant text (`{% generation %}`), so answers are found from renderings of
prefixes, and every assumption that takes is checked rather than trusted. For answer number n:

1. its prompt (the messages before it, plus the generation prompt) must be how the full rendering begins;
2. rendered as the last turn, the template writes it as `lead + text + end-of-turn`, where `text` is the
   answer verbatim (or stripped, for templates that trim) and end-of-turn is one special token;
3. in the full rendering, right after its prompt, it must read `text + end-of-turn`, or the same
   `lead + text + end-of-turn` (Qwen3 writes an empty `<think>` block before its last answer only).

The span is `text + end-of-turn`: exactly what the model must write and where it must stop. A lead the
template writes before the answer is context, not a target. Templates that rewrite earlier turns (the
reasoning of Qwen3/DeepSeek-R1 answers is dropped from history), answers the template changes, or turns
that end in anything but a special token are reported, never guessed around.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

__all__ = ["AnswerSpan", "RenderedChat", "AnswerSpanError", "apply_template", "answer_lead", "locate_answers",
           "render_chats", "template_name"]

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class AnswerSpan:
    """One assistant answer in the full rendering: `text[start:end] == expected` (answer + end-of-turn)."""

    start: int
    end: int
    expected: str


@dataclass(frozen=True)
class RenderedChat:
    text: str
    answers: tuple[AnswerSpan, ...]


class AnswerSpanError(ValueError):
    """Conversation `index` of a batch: its answer number `answer` (1-based) cannot be located exactly."""

    def __init__(self, index: int, answer: int, reason: str):
        super().__init__(f"answer {answer}: {reason}")
        self.index, self.answer, self.reason = index, answer, reason


def template_name(tokenizer) -> str:
    """How errors name a chat template: the tokenizer it belongs to and a fingerprint of its text.

    >>> class T: name_or_path, chat_template = "org/model", "{{ x }}"
    >>> template_name(T())
    "the chat template of 'org/model' (sha256 e52c737297f7)"
    """
    digest = hashlib.sha256(str(tokenizer.chat_template or "").encode()).hexdigest()[:12]
    return f"the chat template of '{tokenizer.name_or_path or 'an unnamed tokenizer'}' (sha256 {digest})"


def apply_template(tokenizer, conversations: list[Messages], add_generation_prompt: bool) -> list[str]:
    """The template's text for each conversation, in one call."""
    if not conversations:
        return []
    texts = tokenizer.apply_chat_template(conversations, tokenize=False, add_generation_prompt=add_generation_prompt)
    return list(texts)


_PROBE_ANSWER = "lorakit-probe-answer"


def answer_lead(tokenizer, messages: Messages, prompt: str) -> str:
    """What the template writes between the generation prompt and a last answer (Qwen3: an empty think block;
    most templates: nothing), so that chat prompts end exactly where training's last answers begin."""
    [after] = apply_template(tokenizer, [[*messages, {"role": "assistant", "content": _PROBE_ANSWER}]], False)
    position = after.find(_PROBE_ANSWER, len(prompt))
    return after[len(prompt):position] if after.startswith(prompt) and position >= 0 else ""


def special_token_texts(tokenizer) -> tuple[str, ...]:
    """The tokenizer's special tokens, longest first (so `<|endoftext|>` is tried before `<|end|>`)."""
    specials = {token.content for token in tokenizer.added_tokens_decoder.values() if token.special}
    return tuple(sorted(specials | set(tokenizer.all_special_tokens), key=len, reverse=True))


def _snippet(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _written_as(content: str, rendered: str, specials: tuple[str, ...]) -> tuple[str, str, str] | None:
    """(lead, text, end-of-turn) when `rendered` (an answer rendered as the last turn) is lead + text + a special
    token, `text` being the content verbatim or stripped; None otherwise."""
    for text in dict.fromkeys((content, content.strip())):
        position = rendered.find(text)
        while text and position >= 0:
            rest = rendered[position + len(text):]
            end_of_turn = next((special for special in specials if rest.startswith(special)), None)
            if end_of_turn is not None:
                return rendered[:position], text, end_of_turn
            position = rendered.find(text, position + 1)
    return None


def _locate(full: str, before: str, after: str, content: str, specials: tuple[str, ...]) -> AnswerSpan | str:
    """The span of one answer in `full`, or the reason it cannot be trusted."""
    if not full.startswith(before):
        return ("the whole conversation does not begin with this answer's chat prompt (the turns before it plus "
                "the generation prompt): the template writes earlier turns or the generation prompt differently "
                "once the conversation goes on")
    if not after.startswith(before):
        return "rendered as the last turn, the conversation does not begin with the prompt for this answer"
    written = _written_as(content, after[len(before):], specials)
    if written is None:
        return (f"the template does not write the answer's text followed by one end-of-turn special token "
                f"(it writes {_snippet(after[len(before):])})")
    lead, text, end_of_turn = written
    start = len(before)
    for candidate_lead in dict.fromkeys(("", lead)):
        if full.startswith(candidate_lead + text + end_of_turn, start):
            begin = start + len(candidate_lead)
            return AnswerSpan(begin, begin + len(text) + len(end_of_turn), text + end_of_turn)
    return (f"in the whole conversation the template writes it as {_snippet(full[start:])}, not as "
            f"{_snippet(text + end_of_turn)}")


def render_chats(tokenizer, batch: list[Messages]) -> list[RenderedChat]:
    """Full text and answer spans of each conversation; raises the AnswerSpanError of the first that fails."""
    chats = locate_answers(tokenizer, batch)
    failed = next((chat for chat in chats if isinstance(chat, AnswerSpanError)), None)
    if failed is not None:
        raise failed
    return chats


def locate_answers(tokenizer, batch: list[Messages]) -> list[RenderedChat | AnswerSpanError]:
    """Full text and answer spans of each conversation, or the AnswerSpanError of its first answer that fails."""
    befores_requests, afters_requests, owners = [], [], []
    for owner, messages in enumerate(batch):
        for index, message in enumerate(messages):
            if message["role"] == "assistant":
                befores_requests.append(messages[:index])
                afters_requests.append(messages[: index + 1])
                owners.append(owner)
    befores = apply_template(tokenizer, befores_requests, add_generation_prompt=True)
    afters = apply_template(tokenizer, afters_requests, add_generation_prompt=False)
    # The last `after` of a conversation that ends with its answer is its full text; render the rest.
    full = {owner: after for owner, after, request in zip(owners, afters, afters_requests)
            if len(request) == len(batch[owner])}
    missing = [owner for owner in range(len(batch)) if owner not in full]
    full.update(zip(missing, apply_template(tokenizer, [batch[o] for o in missing], add_generation_prompt=False)))
    specials = special_token_texts(tokenizer)
    answers: list[list[AnswerSpan]] = [[] for _ in batch]
    failed: dict[int, AnswerSpanError] = {}
    for owner, before, after, request in zip(owners, befores, afters, afters_requests):
        if owner in failed:
            continue
        located = _locate(full[owner], before, after, request[-1]["content"], specials)
        if isinstance(located, AnswerSpan) and answers[owner] and located.start < answers[owner][-1].end:
            located = "it overlaps the answer before it"
        if isinstance(located, str):
            failed[owner] = AnswerSpanError(owner, len(answers[owner]) + 1, located)
        else:
            answers[owner].append(located)
    return [failed.get(owner) or RenderedChat(full[owner], tuple(answers[owner])) for owner in range(len(batch))]
