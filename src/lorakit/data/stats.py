"""Token statistics of a dataset under the model's tokenizer and chat template, and a length histogram."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lorakit.data.conversation import Conversation
from lorakit.data.masking import IGNORE_INDEX
from lorakit.data.render import render_batch

__all__ = ["PERCENTILES", "TokenStats", "token_stats", "default_histogram_path", "write_histogram"]

PERCENTILES = (50, 90, 95, 99)
_BATCH = 512
_UNLIMITED = 1 << 62


@dataclass
class TokenStats:
    """Lengths are of the full rendered example (system prompt and template included), before truncation;
    trained/context tokens count what remains after truncation at `max_length`."""

    max_length: int
    examples: int = 0
    tokens: int = 0
    truncated: int = 0
    trained_tokens: int = 0
    context_tokens: int = 0
    lengths: list[int] = field(default_factory=list, repr=False)

    def percentiles(self) -> dict[str, int]:
        if not self.lengths:
            return {}
        values = np.percentile(np.asarray(self.lengths), PERCENTILES, method="inverted_cdf")
        named = {f"p{q}": int(v) for q, v in zip(PERCENTILES, values)}
        return {"min": min(self.lengths), **named, "max": max(self.lengths)}

    @property
    def truncated_share(self) -> float:
        return self.truncated / self.examples if self.examples else 0.0

    def to_json(self) -> dict:
        return {
            "examples": self.examples,
            "tokens": self.tokens,
            "mean_tokens": round(self.tokens / self.examples, 1) if self.examples else 0,
            "percentiles": self.percentiles(),
            "max_length": self.max_length,
            "truncated": self.truncated,
            "truncated_share": round(self.truncated_share, 4),
            "trained_tokens": self.trained_tokens,
            "context_tokens": self.context_tokens,
        }


def _add_batch(stats: TokenStats, batch: list[Conversation], tokenizer, system_prompt: str) -> None:
    for example in render_batch(batch, tokenizer, system_prompt, _UNLIMITED):
        length = len(example.input_ids)
        kept = example.labels[: stats.max_length]
        trained = sum(label != IGNORE_INDEX for label in kept)
        stats.examples += 1
        stats.tokens += length
        stats.lengths.append(length)
        stats.truncated += length > stats.max_length
        stats.trained_tokens += trained
        stats.context_tokens += len(kept) - trained


def token_stats(conversations: Iterable[Conversation], tokenizer, system_prompt: str, max_length: int) -> TokenStats:
    """Stream conversations through the renderer in batches; only the lengths are kept."""
    stats = TokenStats(max_length=max_length)
    batch: list[Conversation] = []
    for conversation in conversations:
        batch.append(conversation)
        if len(batch) == _BATCH:
            _add_batch(stats, batch, tokenizer, system_prompt)
            batch = []
    if batch:
        _add_batch(stats, batch, tokenizer, system_prompt)
    return stats


def default_histogram_path(data_path: str | Path) -> Path:
    """Next to the data: `<file>.lengths.png` in the data file's (or saved dataset folder's) own folder.

    >>> str(default_histogram_path("data/qa.jsonl"))
    'data/qa.jsonl.lengths.png'
    """
    data_path = Path(data_path)
    return data_path.parent / f"{data_path.name}.lengths.png"


def write_histogram(stats: TokenStats, path: str | Path, title: str) -> Path:
    """A PNG histogram of example lengths with the max_length cut marked."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never open a window
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
    axes.hist(stats.lengths, bins=min(60, max(1, len(set(stats.lengths)))), color="#4C72B0")
    axes.axvline(stats.max_length, color="#C44E52", linestyle="--", label=f"max_length = {stats.max_length}")
    axes.set_xlabel("tokens per example (system prompt and chat template included)")
    axes.set_ylabel("examples")
    axes.set_title(f"{title}: {stats.examples} examples, {stats.truncated_share:.1%} truncated")
    axes.legend()
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
