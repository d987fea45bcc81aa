"""Zero-shot multiple choice by log-likelihood: which option letter does the model find most likely?

Each question is rendered exactly as chat renders a user turn (data/render.py's `render_prompt_ids`: the run's
chat template and system prompt), and every option is one letter token right after the assistant header. So
one forward pass per question scores all options: the log-softmax of the logits at the last prompt position,
read at the letter ids. This equals lm-evaluation-harness's log-likelihood of each single-token continuation
(bench/knowledge_vs_lm_eval.py checks it). For speed on CPU: the tokens every prompt shares (system prompt and
template) are computed once and their key/value cache reused; the rest is sorted by length and batched under a
token budget (little padding), padded on the left so that the last position is the same column for every row,
and the model computes logits for that one position only (`logits_to_keep=1`), not the 49k-word vocabulary at
every position.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from lorakit.data.render import render_prompt_ids
from lorakit.errors import LorakitError
from lorakit.evaluation.knowledge_items import LETTERS, KnowledgeItem, item_messages

__all__ = ["BATCH_TOKENS", "ScoredItem", "letter_token_ids", "prompt_ids", "shared_prefix_length", "letter_logprobs",
           "score_items"]

BATCH_TOKENS = 6144  # padded tokens per forward pass (sorted by length, so padding stays small)
_MAX_BATCH = 32

Progress = Callable[[int], None]  # called with the number of prompts just scored


@dataclass(frozen=True)
class ScoredItem:
    item: KnowledgeItem
    logprobs: tuple[float, ...]  # of each option's letter, in option order

    @property
    def chosen(self) -> int:
        return max(range(len(self.logprobs)), key=self.logprobs.__getitem__)

    @property
    def correct(self) -> bool:
        return self.chosen == self.item.answer


def prompt_ids(items: Sequence[KnowledgeItem], tokenizer, system_prompt: str) -> list[list[int]]:
    return [render_prompt_ids(item_messages(item), tokenizer, system_prompt) for item in items]


def letter_token_ids(tokenizer, example_prompt: list[int], count: int) -> list[int]:
    """The token id of each option letter as it follows a prompt; an error when a letter is not exactly one
    token appended to the prompt (then one position could not score the options)."""
    context = tokenizer.decode(example_prompt, skip_special_tokens=False)
    ids = []
    for letter in LETTERS[:count]:
        joined = tokenizer(context + letter, add_special_tokens=False)["input_ids"]
        if joined[:-1] != list(example_prompt) or len(joined) != len(example_prompt) + 1:
            raise LorakitError(
                f"The tokenizer of this model does not write the option letter {letter!r} as one token after the "
                "chat prompt, so knowledge questions cannot be scored by one forward pass.",
                hint="Use a model whose tokenizer keeps single capital letters as tokens (most do).")
        ids.append(joined[-1])
    return ids


def _batches(lengths: Sequence[int]) -> list[list[int]]:
    """Indices grouped by similar length, each group's padded size within BATCH_TOKENS."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__, reverse=True)
    batches: list[list[int]] = []
    for index in order:
        current = batches[-1] if batches else None
        # longest first, so the first row of a batch is its widest
        if current and len(current) < _MAX_BATCH and lengths[current[0]] * (len(current) + 1) <= BATCH_TOKENS:
            current.append(index)
        else:
            batches.append([index])
    return batches


def shared_prefix_length(prompts: Sequence[list[int]]) -> int:
    """Tokens every prompt starts with (system prompt, template, the benchmark's lead-in), at least one left over.

    >>> shared_prefix_length([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]])
    2
    >>> shared_prefix_length([[1, 2], [1, 2]])
    1
    """
    first, length = prompts[0], min(len(p) for p in prompts) - 1
    for prompt in prompts[1:]:
        same = 0
        while same < length and prompt[same] == first[same]:
            same += 1
        length = same
    return length


@torch.inference_mode()
def letter_logprobs(model, prompts: Sequence[list[int]], letter_ids: Sequence[int], pad_id: int,
                    device: torch.device, progress: Progress | None = None) -> list[list[float]]:
    """Log-probability of each letter id as the next token after each prompt (full-vocabulary log-softmax).

    The tokens all prompts share (about 100 of the system prompt and template, a third of an average item) are
    run once; each batch continues from a copy of their key/value cache."""
    results: list[list[float]] = [[] for _ in prompts]
    letters = torch.tensor(list(letter_ids), device=device)
    shared = shared_prefix_length(prompts)
    prefix_cache = model(input_ids=torch.tensor([prompts[0][:shared]], device=device),
                         use_cache=True, logits_to_keep=1).past_key_values if shared else None
    for batch in _batches([len(p) - shared for p in prompts]):
        width = max(len(prompts[i]) for i in batch) - shared
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), shared + width), dtype=torch.long)
        mask[:, :shared] = 1
        for row, index in enumerate(batch):
            rest = prompts[index][shared:]
            input_ids[row, width - len(rest):] = torch.tensor(rest)
            mask[row, shared + width - len(rest):] = 1
        # Left padding (so the last column is every row's last token), padded between the shared prefix and
        # the rest: positions count real tokens only, so each row sees exactly its own unpadded prompt.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, shared:]
        cache = None
        if prefix_cache is not None:
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(len(batch))
        logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                       position_ids=positions.to(device), past_key_values=cache, use_cache=cache is not None,
                       logits_to_keep=1).logits[:, -1, :]
        chosen = torch.log_softmax(logits.float(), dim=-1)[:, letters].cpu().tolist()
        for row, index in enumerate(batch):
            results[index] = chosen[row]
        if progress is not None:
            progress(len(batch))
    return results


def score_items(model, tokenizer, items: Sequence[KnowledgeItem], prompts: Sequence[list[int]], device: torch.device,
                progress: Progress | None = None) -> list[ScoredItem]:
    """Each item with its options' letter log-probabilities under `model` (prompts from `prompt_ids`)."""
    if not items:
        return []
    widest = max(len(item.choices) for item in items)
    letter_ids = letter_token_ids(tokenizer, prompts[0], widest)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    logprobs = letter_logprobs(model, prompts, letter_ids, pad_id, device, progress)
    return [ScoredItem(item, tuple(row[:len(item.choices)])) for item, row in zip(items, logprobs)]
