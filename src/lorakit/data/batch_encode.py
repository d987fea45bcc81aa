"""Encode many rendered conversations at once with a fast tokenizer: token ids and their start offsets.

Tokenizing thousands of examples one at a time spends most of its time in Python; here the fast tokenizer
encodes a whole batch on all cores. Every example starts with the same rendered system turn, so that prefix
is tokenized once per batch: a tokenizer splits text at special tokens before anything else, so when the
rest of an example begins with a special token, its tokens are the prefix's tokens followed by the rest's.
This is checked against a full encode for each prefix (per batch) and not used where it does not hold.
"""

from __future__ import annotations

from jinja2.exceptions import TemplateError

from lorakit.data.chat_spans import Messages, apply_template
from lorakit.runtime.logging import get_logger

__all__ = ["system_prefixes", "encode_texts"]

log = get_logger("data.batch_encode")


def system_prefixes(tokenizer, batch: list[Messages]) -> list[str]:
    """The rendered leading system turn of each conversation ('' when there is none or it cannot be rendered)."""
    systems = {m[0]["content"] for m in batch if m and m[0]["role"] == "system"}
    rendered: dict[str, str] = {}
    for content in systems:
        try:
            [rendered[content]] = apply_template(tokenizer, [[{"role": "system", "content": content}]], False)
        except TemplateError:  # templates that refuse a lone system turn: no shared prefix
            rendered[content] = ""
    return [rendered[m[0]["content"]] if m and m[0]["role"] == "system" else "" for m in batch]


def encode_texts(tokenizer, texts: list[str], prefixes: list[str], offsets: bool) -> list[tuple[list[int], list[int]]]:
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
