"""Batched decoding with a KV cache: many prompts in one left-padded batch, each row stopping at its own
end-of-turn token.

Why not `model.generate` on a left-padded batch: its repetition penalty treats the pad tokens as text
already seen (so a row's answer changes with its neighbours whenever the pad id is not in its prompt), it
keeps computing rows that have finished, and it cannot mix the base model and the fine-tuned model in
one batch. This loop
- left-pads the prompts, with position ids that count real tokens only (each row sees what it would alone);
- penalizes, per row, the last `repeat_last_n` tokens of its own answer, never its prompt: llama.cpp's and
  Ollama's repeat_penalty, so that an exported GGUF given the same settings answers as lorakit does (issue 25:
  transformers' repetition_penalty also penalizes the prompt, and no llama.cpp setting reproduces that);
- drops finished rows from the batch and from the cache, so the batch shrinks as answers end;
- passes peft's mixed-batch `adapter_names` when rows differ ("__base__" = the adapter switched off).
Greedy answers equal one-at-a-time `model.generate` token for token (tests/inference/test_decode.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from lorakit.config import RunConfig
from lorakit.inference.attention_backend import decoding_attention
from lorakit.inference.recent_tokens import RecentTokens

__all__ = ["GenerationSettings", "Decoded", "FinishReason", "AnswerRepetitionPenalty", "penalize_repeats", "decode_batch"]

FinishReason = Literal["stop", "length", "cancelled"]
"""Why a row ended: its end-of-turn token ("stop"), max_new_tokens ("length"), or a cancel event."""


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 200
    temperature: float = 0.0
    top_p: float = 0.9
    repetition_penalty: float = 1.1
    repeat_last_n: int = 64  # the penalty counts the answer's last this many tokens

    @classmethod
    def from_config(cls, config: RunConfig) -> GenerationSettings:
        i = config.inference
        return cls(i.max_new_tokens, i.temperature, i.top_p, i.repetition_penalty, i.repeat_last_n)


@dataclass(frozen=True)
class Decoded:
    """A row's new token ids (ending with the stop id when it stopped) and why it ended."""

    token_ids: tuple[int, ...]
    finish_reason: FinishReason

    @property
    def truncated(self) -> bool:
        """Cut at max_new_tokens before the model ended its turn."""
        return self.finish_reason == "length"


class _Batch:
    """The rows still decoding: their original indices, attention mask, positions, cache."""

    def __init__(self, prompts: Sequence[Sequence[int]], pad_id: int, device: torch.device,
                 adapter_names: Sequence[str] | None):
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
            mask[row, width - len(prompt):] = 1
        self.input_ids, self.mask = ids.to(device), mask.to(device)
        self.positions = (self.mask.cumsum(-1) - 1).clamp(min=0)
        self.rows = list(range(len(prompts)))
        self.adapter_names = list(adapter_names) if adapter_names is not None else None
        self.cache = None

    def forward(self, model) -> torch.Tensor:
        """Logits (float32) of the next token for every row."""
        extra = {"adapter_names": self.adapter_names} if self.adapter_names is not None else {}
        with decoding_attention():  # no cuDNN graph build for each new KV length (attention_backend.py)
            out = model(input_ids=self.input_ids, attention_mask=self.mask, position_ids=self.positions,
                        cache=self.cache, use_cache=True, logits_to_keep=1, **extra)
        self.cache = out.cache
        return out.logits[:, -1].to(dtype=torch.float32)

    def advance(self, next_tokens: torch.Tensor) -> None:
        self.input_ids = next_tokens[:, None]
        self.positions = self.positions[:, -1:] + 1
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(self.rows), 1))], dim=1)

    def keep(self, kept: list[int]) -> torch.Tensor:
        """Drop the rows not in `kept` (batch positions) from every tensor and from the KV cache; returns `kept`
        on the device."""
        index = torch.tensor(kept, device=self.mask.device)
        self.cache.batch_select_indices(index)
        self.mask, self.positions = self.mask[index], self.positions[index]
        self.input_ids = self.input_ids[index]
        self.rows = [self.rows[b] for b in kept]
        if self.adapter_names is not None:
            self.adapter_names = [self.adapter_names[b] for b in kept]
        return index


def penalize_repeats(logits: torch.Tensor, answers: Sequence[Sequence[int]], penalty: float, last_n: int) -> torch.Tensor:
    """llama.cpp's repeat penalty: the logits of the tokens among each row's last `last_n` answer tokens are
    divided by `penalty` (multiplied when <= 0); the prompt's tokens are not penalized.

    >>> penalize_repeats(torch.tensor([[2.0, -2.0, 2.0]]), [[0, 1]], 2.0, 64).tolist()
    [[1.0, -4.0, 2.0]]
    >>> penalize_repeats(torch.tensor([[2.0, -2.0, 2.0]]), [[0, 1]], 2.0, 1).tolist()  # only token 1 is recent
    [[2.0, -4.0, 2.0]]
    """
    if penalty == 1.0:
        return logits
    seen = torch.zeros_like(logits, dtype=torch.bool)
    for row, answer in enumerate(answers):
        if answer:
            seen[row, torch.tensor(answer[-last_n:], dtype=torch.long, device=logits.device)] = True
    penalized = torch.where(logits <= 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalized, logits)


class AnswerRepetitionPenalty:
    """penalize_repeats as a transformers logits processor for `model.generate` on prompts of `prompt_length`
    tokens (transformers' own repetition_penalty would also penalize the prompt).

    With sampling, transformers runs custom processors after its temperature and top-p warpers, so the nucleus
    is chosen before the penalty; greedy answers are exactly decode_batch's."""

    def __init__(self, prompt_length: int, penalty: float, last_n: int):
        self.prompt_length, self.penalty, self.last_n = prompt_length, penalty, last_n

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        answers = [row[self.prompt_length:].tolist() for row in input_ids]
        return penalize_repeats(scores, answers, self.penalty, self.last_n)


def _choose(logits: torch.Tensor, settings: GenerationSettings, generator: torch.Generator | None) -> torch.Tensor:
    if settings.temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits / settings.temperature
    if settings.top_p < 1.0:
        # Nucleus: keep the smallest set of most likely tokens whose probability reaches top_p (at least one).
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative - sorted_logits.softmax(dim=-1) >= settings.top_p
        logits = logits.scatter(1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(1)


@torch.no_grad()
def decode_batch(
    model,
    prompts: Sequence[Sequence[int]],
    settings: GenerationSettings,
    *,
    stop_ids: Sequence[int],
    pad_id: int,
    device: torch.device,
    adapter_names: Sequence[str] | None = None,
    on_done: Callable[[int, Decoded], None] | None = None,
    cancel: threading.Event | None = None,
    generator: torch.Generator | None = None,
) -> list[Decoded]:
    """Decode every prompt (token ids, unpadded) in one batch; `on_done(index, decoded)` fires as each row ends.

    `adapter_names` (one per prompt, peft's mixed-batch argument) picks each row's adapter; None runs the model
    as it is. Setting `cancel` ends every unfinished row after the current step (finish_reason "cancelled").
    """
    assert prompts and all(prompts), "every prompt has at least one token"
    stops = set(stop_ids)
    batch = _Batch(prompts, pad_id, device, adapter_names)
    generated: list[list[int]] = [[] for _ in prompts]
    results: list[Decoded | None] = [None] * len(prompts)

    def finish(row: int, reason: FinishReason) -> None:
        results[row] = Decoded(tuple(generated[row]), reason)
        if on_done is not None:
            on_done(row, results[row])

    recent = RecentTokens(device)  # the rows' last answer tokens on the device (no per-row copies per step)
    while batch.rows:
        logits = batch.forward(model)
        if len(recent):  # the first tokens have no answer before them to penalize
            logits = recent.penalize(logits)
        next_tokens = _choose(logits, settings, generator)
        if len(recent):
            recent.push(next_tokens)
        else:
            recent.add_rows(next_tokens, [settings.repeat_last_n] * len(prompts), [settings.repetition_penalty] * len(prompts))
        kept = []
        for position, (row, token) in enumerate(zip(batch.rows, next_tokens.tolist())):
            generated[row].append(token)
            if token in stops:
                finish(row, "stop")
            elif len(generated[row]) >= settings.max_new_tokens:
                finish(row, "length")
            else:
                kept.append(position)
        if cancel is not None and cancel.is_set():
            for position in kept:
                finish(batch.rows[position], "cancelled")
            break
        if len(kept) < len(batch.rows):
            if not kept:
                break
            recent.keep(kept, batch.keep(kept))
            next_tokens = next_tokens[kept]
        batch.advance(next_tokens)
    return results
