"""Tokenized examples cached on disk, so that a second run starts without re-tokenizing.

The key hashes everything the tokens depend on: the conversations themselves (text, file and line), the
tokenizer (its full serialized form and special tokens), the chat template, the system prompt,
max_length and this cache's format version. Entries are .npz files (no pickle) written atomically under
`<cache root>/tokenized/`; a damaged entry is rebuilt with one warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lorakit.data.conversation import Conversation
from lorakit.data.render import TokenizedExample, render_batch
from lorakit.runtime.cache_dir import cache_root
from lorakit.runtime.logging import get_logger

__all__ = ["CACHE_VERSION", "tokenizer_fingerprint", "cache_key", "render_cached"]

log = get_logger("data.token_cache")

CACHE_VERSION = "2"  # 2: labels end at the end-of-turn token (Phi-4-style templates), checked per answer
_BATCH = 512


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of what decides token ids: the serialized fast tokenizer (or the vocabulary) and special tokens."""
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    if tokenizer.is_fast:
        digest.update(tokenizer.backend_tokenizer.to_str().encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    digest.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def cache_key(conversations: Sequence[Conversation], tokenizer, system_prompt: str, max_length: int) -> str:
    digest = hashlib.sha256()
    header = [CACHE_VERSION, tokenizer_fingerprint(tokenizer), tokenizer.chat_template or "", system_prompt, max_length]
    digest.update(json.dumps(header).encode())
    for conversation in conversations:
        digest.update(f"\x1d{conversation.source}\x1f{conversation.line}".encode("utf-8", "surrogatepass"))
        for message in conversation.messages:
            digest.update(f"\x1e{message.role}\x1f{message.content}".encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def _save(path: Path, examples: list[TokenizedExample]) -> None:
    sources = sorted({example.source for example in examples})
    source_index = {source: index for index, source in enumerate(sources)}
    arrays = {
        "input_ids": np.fromiter((t for e in examples for t in e.input_ids), dtype=np.int64),
        "labels": np.fromiter((t for e in examples for t in e.labels), dtype=np.int64),
        "lengths": np.array([len(e.input_ids) for e in examples], dtype=np.int64),
        "truncated": np.array([e.truncated for e in examples], dtype=bool),
        "lines": np.array([e.line for e in examples], dtype=np.int64),
        "source_ids": np.array([source_index[e.source] for e in examples], dtype=np.int64),
        "sources": np.frombuffer(json.dumps(sources).encode(), dtype=np.uint8),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(partial, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _load(path: Path) -> list[TokenizedExample]:
    with np.load(path, allow_pickle=False) as stored:
        sources = json.loads(stored["sources"].tobytes().decode())
        ids, labels = stored["input_ids"].tolist(), stored["labels"].tolist()
        lengths, truncated = stored["lengths"].tolist(), stored["truncated"].tolist()
        lines, source_ids = stored["lines"].tolist(), stored["source_ids"].tolist()
    examples, start = [], 0
    for length, was_truncated, line, source_id in zip(lengths, truncated, lines, source_ids):
        end = start + length
        examples.append(TokenizedExample(ids[start:end], labels[start:end], was_truncated, sources[source_id], line))
        start = end
    return examples


def render_cached(conversations: Sequence[Conversation], tokenizer, system_prompt: str, max_length: int,
                  cache_dir: str | Path | None = None) -> list[TokenizedExample]:
    """`render_batch` over all conversations, from the cache when the same inputs were tokenized before."""
    directory = Path(cache_dir) if cache_dir is not None else cache_root() / "tokenized"
    path = directory / f"{cache_key(conversations, tokenizer, system_prompt, max_length)}.npz"
    if path.is_file():
        try:
            examples = _load(path)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            log.warning("tokenized-data cache entry %s is damaged (%s); tokenizing again", path, type(exc).__name__)
        else:
            if len(examples) == len(conversations):
                log.debug("tokenized data loaded from cache %s", path)  # every run: not worth a line
                return examples
            log.warning("tokenized-data cache entry %s does not match the data; tokenizing again", path)
    examples = []
    for start in range(0, len(conversations), _BATCH):
        examples.extend(render_batch(conversations[start:start + _BATCH], tokenizer, system_prompt, max_length))
    _save(path, examples)
    return examples
