"""Continuous batching: requests join a running batch between two decoding steps and leave at their own end.

All rows share one KV cache (transformers' DynamicCache: per layer, keys and values of shape
[rows, heads, length, head_dim]), left-padded to a common length:
- rows that arrive together are prefilled together (a left-padded batch, as in decode.py), and their cache
  is then joined to the running one: both are left-padded with zeros to the longer length and stacked;
- the attention mask marks every padded column, and each row's position ids count its real tokens only,
  so a row computes what it would alone (greedy answers equal one-at-a-time `model.generate`, token for
  token: tests/inference/test_running_batch.py);
- a row that ends leaves the cache at once, and columns that no remaining row uses any more (left padding
  of the rows that left) are cut away, so the cache is as long as its longest live row, however long the
  server has been running.
Each row samples with its own settings and its own torch.Generator (a request's seed gives the same answer
whatever shares its batch) and is penalized for its own answer only (decode.py's rules), from one device tensor
of every row's recent tokens (inference/recent_tokens.py): choosing greedy tokens costs the host the same few
kernel launches and one copy back (the new tokens) however many rows it decodes (a sampled row still draws from
its own generator, row by row).

Why not transformers' own continuous batching (`model.generate_batch`, 5.x): it drops the repetition
penalty (RepetitionPenaltyLogitsProcessor.supports_continuous_batching is False), which every lorakit run
uses for chat, and it has no per-request generator.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from lorakit.inference.attention_backend import decoding_attention
from lorakit.inference.decode import FinishReason, GenerationSettings, _choose
from lorakit.inference.recent_tokens import RecentTokens

__all__ = ["RowRequest", "NewToken", "RunningBatch", "batching_blocker"]


@dataclass(frozen=True)
class RowRequest:
    """A prompt (token ids, unpadded) to decode; `key` names the row in every NewToken."""

    key: Hashable
    prompt: Sequence[int]
    settings: GenerationSettings
    generator: torch.Generator | None = None  # None: greedy, or torch's global generator when sampling


@dataclass(frozen=True)
class NewToken:
    """One row's next token; `finish_reason` is set when it ended the row ('stop' or 'length'), which has left."""

    key: Hashable
    token: int
    finish_reason: FinishReason | None


def batching_blocker(model) -> str | None:
    """Why this model's KV cache cannot be left-padded and joined, or None when it can.

    Full-attention layers can. A sliding window that covers the model's whole context behaves as full
    attention (Phi-4-mini's 262,144 over 131,072); a shorter window would count padding as text."""
    context = int(model.config.max_position_embeddings)
    for layer in DynamicCache(config=model.config).layers:
        if type(layer) is DynamicLayer:
            continue
        if type(layer) is DynamicSlidingWindowLayer and layer.sliding_window > context:
            continue
        window = getattr(layer, "sliding_window", None)
        return f"its cache has {type(layer).__name__} layers" + (f" (window {window} < context {context})"
                                                                  if window else "")
    return None


def _rebuilt(cache: DynamicCache, change: Callable[[torch.Tensor], torch.Tensor]) -> DynamicCache:
    """A new cache whose keys and values are `change`d (rows selected, columns padded or cut)."""
    return DynamicCache([(change(keys), change(values), window) for keys, values, window in cache])


def _stacked(first: DynamicCache, second: DynamicCache, width: int) -> DynamicCache:
    """The rows of both caches in one, each left-padded with zeros to `width` columns."""
    def pad(tensor: torch.Tensor) -> torch.Tensor:
        return F.pad(tensor, (0, 0, width - tensor.shape[-2], 0))

    return DynamicCache([(torch.cat([pad(k1), pad(k2)]), torch.cat([pad(v1), pad(v2)]), window)
                         for (k1, v1, window), (k2, v2, _) in zip(first, second)])


class RunningBatch:
    """The rows decoding now. `join` prefills new rows, `step` decodes one token for every row, `leave` drops rows.

    Both `join` and `step` return each row's new token; a row whose token ended it (a stop id, or its
    max_new_tokens) has already left. Every other row decodes on at the next `step`.
    """

    def __init__(self, model, *, stop_ids: Sequence[int], pad_id: int, device: torch.device):
        self.model = model
        self._stops = set(stop_ids)
        self._pad_id = pad_id
        self._device = device
        self._requests: list[RowRequest] = []
        self._counts: list[int] = []  # tokens generated per row
        self._recent = RecentTokens(device)  # each row's last answer tokens, for its repetition penalty
        self._cache: DynamicCache | None = None
        self._mask = self._positions = self._next = None  # [rows, length], [rows], [rows]

    def __len__(self) -> int:
        return len(self._requests)

    @property
    def keys(self) -> list[Hashable]:
        return [request.key for request in self._requests]

    @property
    def length(self) -> int:
        """Columns in the KV cache (the longest live row)."""
        return 0 if self._mask is None else self._mask.shape[1]

    @torch.no_grad()
    def join(self, requests: Sequence[RowRequest]) -> list[NewToken]:
        """Prefill `requests` together, choose their first tokens, and add the rows that go on to the batch."""
        assert requests and all(r.prompt for r in requests), "every prompt has at least one token"
        width = max(len(r.prompt) for r in requests)
        ids = torch.full((len(requests), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(requests), width), dtype=torch.long)
        for row, request in enumerate(requests):
            ids[row, width - len(request.prompt):] = torch.tensor(list(request.prompt), dtype=torch.long)
            mask[row, width - len(request.prompt):] = 1
        ids, mask = ids.to(self._device), mask.to(self._device)
        with decoding_attention():
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                             cache=None, use_cache=True, logits_to_keep=1)
        logits = out.logits[:, -1].to(dtype=torch.float32)
        tokens = self._choose(logits, list(requests), penalize=False)  # nothing said yet: nothing to penalize
        self._append(list(requests), out.cache, mask, tokens)
        return self._after_choosing(tokens, first=len(self) - len(requests))

    @torch.no_grad()
    def step(self) -> list[NewToken]:
        """Feed every row its last token and choose the next one."""
        assert self._requests, "no rows to decode"
        self._mask = torch.cat([self._mask, self._mask.new_ones((len(self), 1))], dim=1)
        with decoding_attention():  # no cuDNN graph build for each new KV length (attention_backend.py)
            out = self.model(input_ids=self._next[:, None], attention_mask=self._mask,
                             position_ids=self._positions[:, None], cache=self._cache, use_cache=True, logits_to_keep=1)
        self._cache = out.cache
        self._positions = self._positions + 1
        self._next = self._choose(out.logits[:, -1].to(dtype=torch.float32), self._requests, penalize=True)
        self._recent.push(self._next)
        return self._after_choosing(self._next, first=0)

    def leave(self, keys: Sequence[Hashable]) -> None:
        """Drop these rows (cancelled, or ended by a stop string) from the batch and its cache."""
        gone = set(keys)
        self._keep([row for row, request in enumerate(self._requests) if request.key not in gone])

    def _choose(self, logits: torch.Tensor, requests: list[RowRequest], penalize: bool) -> torch.Tensor:
        """Each row's next token: its own repetition penalty over its own answer (never its prompt, as chat and
        llama.cpp count it), then argmax or a sample from its own generator."""
        if penalize:
            logits = self._recent.penalize(logits)
        tokens = logits.argmax(dim=-1)
        for row, request in enumerate(requests):
            if request.settings.temperature > 0:
                tokens[row] = _choose(logits[row:row + 1], request.settings, request.generator)[0]
        return tokens

    def _append(self, requests: list[RowRequest], cache: DynamicCache, mask: torch.Tensor, tokens: torch.Tensor) -> None:
        positions = mask.sum(dim=-1)  # the next position id: real tokens so far
        if not self._requests:
            self._cache, self._mask, self._positions, self._next = cache, mask, positions, tokens
        else:
            width = max(self.length, mask.shape[1])
            self._cache = _stacked(self._cache, cache, width)
            self._mask = torch.cat([F.pad(self._mask, (width - self.length, 0)), F.pad(mask, (width - mask.shape[1], 0))])
            self._positions = torch.cat([self._positions, positions])
            self._next = torch.cat([self._next, tokens])
        self._recent.add_rows(tokens, [r.settings.repeat_last_n for r in requests],
                              [r.settings.repetition_penalty for r in requests])
        self._requests += requests
        self._counts += [0 for _ in requests]

    def _after_choosing(self, tokens: torch.Tensor, first: int) -> list[NewToken]:
        """Add the new tokens of rows `first`.. (already in `_next`) to their answers; rows that ended leave."""
        new, kept = [], list(range(first))
        for row, token in enumerate(tokens.tolist(), start=first):
            request = self._requests[row]
            self._counts[row] += 1
            ended: FinishReason | None = None
            if token in self._stops:
                ended = "stop"
            elif self._counts[row] >= request.settings.max_new_tokens:
                ended = "length"
            else:
                kept.append(row)
            new.append(NewToken(request.key, token, ended))
        if len(kept) < len(self):
            self._keep(kept)
        return new

    def _keep(self, rows: list[int]) -> None:
        """Keep only these rows, and cut the columns on the left that none of them uses."""
        if len(rows) == len(self):
            return
        self._requests = [self._requests[row] for row in rows]
        self._counts = [self._counts[row] for row in rows]
        if not rows:
            self._cache = self._mask = self._positions = self._next = None
            self._recent = RecentTokens(self._device)
            return
        index = torch.tensor(rows, device=self._device)
        self._recent.keep(rows, index)
        used = self._mask[index].any(dim=0)
        start = int(used.nonzero()[0])  # every row has a real token, so some column is used
        self._cache = _rebuilt(self._cache, lambda t: t[index, :, start:])
        self._mask = self._mask[index, start:]
        self._positions, self._next = self._positions[index], self._next[index]
