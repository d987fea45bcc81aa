"""Render many conversations at once: exactly `render.render_conversation`'s output, batched.

`render_conversation` renders one example at a time; tokenizing thousands that way spends most of its time
in Python. Here the chat template is applied to a whole batch of conversation prefixes in one call, the
fast tokenizer encodes the batch on all cores, and labels are cut from token offsets by binary search.
The masking rule is the same: a token is supervised when its first character lies in an assistant span
(end-of-turn token included). Tests assert equality with `render_conversation` token by token.

Every example starts with the same rendered system turn, so that prefix is tokenized once per batch: a
tokenizer splits text at special tokens before anything else, so when the rest of an example begins with a
special token, its tokens are the prefix's tokens followed by the rest's. This is checked against a full
encode for each prefix (per batch) and not used where it does not hold.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

from jinja2.exceptions import TemplateError

from lorakit.data.conversation import Conversation
from lorakit.data.masking import IGNORE_INDEX
from lorakit.data.render import TokenizedExample, render_conversation, with_system_prompt
from lorakit.runtime.logging import get_logger

__all__ = ["render_batch", "labels_from_token_starts", "count_tokens", "prompt_token_counts"]

log = get_logger("data.batch_render")

Messages = list[dict[str, str]]


def labels_from_token_starts(input_ids: list[int], token_starts: list[int], spans: list[tuple[int, int]]) -> list[int]:
    """`masking.labels_from_spans` for non-decreasing token starts, in O(spans * log tokens).

    >>> labels_from_token_starts([7, 8, 9, 10], [0, 3, 5, 9], [(3, 9)])
    [-100, 8, 9, -100]
    """
    labels = [IGNORE_INDEX] * len(input_ids)
    for span_start, span_end in spans:
        first, last = bisect_left(token_starts, span_start), bisect_left(token_starts, span_end)
        labels[first:last] = input_ids[first:last]
    return labels


def _apply_template(tokenizer, conversations: list[Messages], add_generation_prompt: bool) -> list[str]:
    if not conversations:
        return []
    texts = tokenizer.apply_chat_template(conversations, tokenize=False, add_generation_prompt=add_generation_prompt)
    return list(texts)


def _texts_and_spans(tokenizer, batch: list[Messages]) -> tuple[list[str], list[list[tuple[int, int]]]]:
    """Full text of each conversation and the character spans of its assistant turns (as in render.py)."""
    before_requests: list[Messages] = []
    after_requests: list[Messages] = []
    owners: list[int] = []
    for owner, messages in enumerate(batch):
        for index, message in enumerate(messages):
            if message["role"] == "assistant":
                before_requests.append(messages[:index])
                after_requests.append(messages[: index + 1])
                owners.append(owner)
    befores = _apply_template(tokenizer, before_requests, add_generation_prompt=True)
    afters = _apply_template(tokenizer, after_requests, add_generation_prompt=False)
    # The last `after` of a conversation that ends with its answer is its full text; render the rest.
    full: dict[int, str] = {owner: after for owner, after, request in zip(owners, afters, after_requests)
                            if len(request) == len(batch[owner])}
    missing = [owner for owner in range(len(batch)) if owner not in full]
    full.update(zip(missing, _apply_template(tokenizer, [batch[o] for o in missing], add_generation_prompt=False)))
    spans: list[list[tuple[int, int]]] = [[] for _ in batch]
    for owner, before, after in zip(owners, befores, afters):
        if not after.startswith(before):
            raise ValueError("chat template does not render conversation prefixes as prefixes; cannot mask")
        spans[owner].append((len(before), len(after.rstrip())))
    return [full[owner] for owner in range(len(batch))], spans


def _system_prefixes(tokenizer, batch: list[Messages]) -> list[str]:
    """The rendered leading system turn of each conversation ('' when there is none or it cannot be rendered)."""
    systems = {m[0]["content"] for m in batch if m and m[0]["role"] == "system"}
    rendered: dict[str, str] = {}
    for content in systems:
        try:
            [rendered[content]] = _apply_template(tokenizer, [[{"role": "system", "content": content}]], False)
        except TemplateError:  # templates that refuse a lone system turn: no shared prefix
            rendered[content] = ""
    return [rendered[m[0]["content"]] if m and m[0]["role"] == "system" else "" for m in batch]


def _encode(tokenizer, texts: list[str], prefixes: list[str], offsets: bool) -> list[tuple[list[int], list[int]]]:
    """(token ids, token start offsets or []) of each text, tokenizing a verified shared prefix only once."""
    backend = tokenizer.backend_tokenizer
    encode = backend.encode_batch if offsets else backend.encode_batch_fast
    specials = tuple(t.content for t in backend.get_added_tokens_decoder().values() if t.special)

    def parts(encoding, shift: int = 0) -> tuple[list[int], list[int]]:
        return encoding.ids, [start + shift for start, _ in encoding.offsets] if offsets else []

    known: dict[str, tuple[list[int], list[int]] | None] = {}
    for text, prefix in zip(texts, prefixes):
        if prefix and prefix not in known and text.startswith(prefix) and text[len(prefix):].startswith(specials):
            whole, head, rest = encode([text, prefix, text[len(prefix):]], add_special_tokens=False)
            joined = (head.ids + rest.ids, parts(head)[1] + parts(rest, len(prefix))[1])
            known[prefix] = parts(head) if joined == parts(whole) else None
            if known[prefix] is None:
                log.debug("a shared prefix does not tokenize separately with this tokenizer; encoding whole texts")
    split = [bool(known.get(p)) and t.startswith(p) and t[len(p):].startswith(specials)
             for t, p in zip(texts, prefixes)]
    pieces = [t[len(p):] if cut else t for t, p, cut in zip(texts, prefixes, split)]
    encodings = encode(pieces, add_special_tokens=False)
    results = []
    for encoding, prefix, cut in zip(encodings, prefixes, split):
        if not cut:
            results.append(parts(encoding))
            continue
        head_ids, head_starts = known[prefix]
        ids, starts = parts(encoding, len(prefix))
        results.append((head_ids + ids, head_starts + starts))
    return results


def render_batch(
    conversations: Sequence[Conversation], tokenizer, system_prompt: str, max_length: int
) -> list[TokenizedExample]:
    """`[render_conversation(c, tokenizer, system_prompt, max_length) for c in conversations]`, faster."""
    if not tokenizer.is_fast:
        log.warning("%s is not a fast tokenizer: rendering one example at a time", type(tokenizer).__name__)
        return [render_conversation(c, tokenizer, system_prompt, max_length) for c in conversations]
    batch = [with_system_prompt(c.messages, system_prompt) for c in conversations]
    texts, spans = _texts_and_spans(tokenizer, batch)
    encoded = _encode(tokenizer, texts, _system_prefixes(tokenizer, batch), offsets=True)
    examples = []
    for conversation, (input_ids, token_starts), conversation_spans in zip(conversations, encoded, spans):
        labels = labels_from_token_starts(input_ids, token_starts, conversation_spans)
        examples.append(TokenizedExample(
            input_ids=input_ids[:max_length],
            labels=labels[:max_length],
            truncated=len(input_ids) > max_length,
            source=conversation.source,
            line=conversation.line,
        ))
    return examples


def count_tokens(conversations: Sequence[Conversation], tokenizer, system_prompt: str) -> list[int]:
    """Tokens in each rendered conversation (system prompt and template included), as training sees it."""
    batch = [with_system_prompt(c.messages, system_prompt) for c in conversations]
    texts = _apply_template(tokenizer, batch, add_generation_prompt=False)
    if not tokenizer.is_fast:
        return [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts]
    return [len(ids) for ids, _ in _encode(tokenizer, texts, _system_prefixes(tokenizer, batch), offsets=False)]


def prompt_token_counts(conversations: Sequence[Conversation], tokenizer, system_prompt: str) -> list[int]:
    """Tokens before the first assistant answer of each conversation (where training targets begin)."""
    prefixes = []
    for conversation in conversations:
        messages = with_system_prompt(conversation.messages, system_prompt)
        first_answer = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
        prefixes.append(messages[:first_answer])
    texts = _apply_template(tokenizer, prefixes, add_generation_prompt=True)
    return [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts]
