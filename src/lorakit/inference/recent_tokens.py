"""Each running row's most recent answer tokens in one device tensor, for the repetition penalty.

decode.py's `penalize_repeats` takes each row's answer as a Python list and copies it to the device, one
host-to-device copy per row per token (each a stream synchronization on a GPU, where nothing else in a decoding
step waits for the host). Serving many rows, the running batch keeps instead a [rows, width] tensor of token ids
on the device, shifted left by one column as each token arrives: the penalty of a step is then a few kernels for
all rows, whatever their number, and gives the same logits bit for bit (the same elementwise operations with
the same Python-number penalty: tests/inference/test_recent_tokens.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["RecentTokens"]

_NONE = -1  # an empty place: the row has said fewer tokens than its window holds


class RecentTokens:
    """Per row: the last `last_n` tokens of its answer (its own last_n; `width` is the largest of them).

    Rows are added (`add_rows`) and dropped (`keep`) with the batch, in the batch's order."""

    def __init__(self, device: torch.device):
        self.device = device
        self.tokens = torch.empty((0, 0), dtype=torch.long, device=device)  # [rows, width], right-aligned
        self.window = torch.empty((0, 0), dtype=torch.bool, device=device)  # True where a row's last_n reaches
        self.penalties: list[float] = []

    def __len__(self) -> int:
        return len(self.penalties)

    def add_rows(self, first_tokens: torch.Tensor, last_ns: Sequence[int], penalties: Sequence[float]) -> None:
        """Rows whose answers so far are `first_tokens` (one token each, on the device)."""
        width = max(self.tokens.shape[1], *last_ns)
        columns = torch.arange(width, device=self.device)
        limits = torch.tensor([width - n for n in last_ns], device=self.device)  # one copy per join, not per step
        new_tokens = F.pad(first_tokens[:, None], (width - 1, 0), value=_NONE)
        self.tokens = torch.cat([F.pad(self.tokens, (width - self.tokens.shape[1], 0), value=_NONE), new_tokens])
        self.window = torch.cat([F.pad(self.window, (width - self.window.shape[1], 0), value=False),
                                 columns[None, :] >= limits[:, None]])
        self.penalties += list(penalties)

    def push(self, tokens: torch.Tensor) -> None:
        """Every row's next token (all rows, in order)."""
        self.tokens = torch.cat([self.tokens[:, 1:], tokens[:, None]], dim=1)

    def keep(self, rows: list[int], index: torch.Tensor) -> None:
        """Keep only these rows (`index`: the same row numbers, on the device)."""
        self.tokens, self.window = self.tokens[index], self.window[index]
        self.penalties = [self.penalties[row] for row in rows]

    def penalize(self, logits: torch.Tensor) -> torch.Tensor:
        """penalize_repeats for every row at once: logits of the tokens in a row's window divided by its penalty
        (multiplied where <= 0)."""
        vocabulary = logits.shape[-1]
        seen = torch.zeros((logits.shape[0], vocabulary + 1), dtype=torch.bool, device=logits.device)
        places = torch.where(self.window & (self.tokens != _NONE), self.tokens, vocabulary)  # empty -> extra column
        seen = seen.scatter_(1, places, True)[:, :vocabulary]
        if len(set(self.penalties)) == 1:
            return _penalized(logits, seen, self.penalties[0])
        for penalty in sorted(set(self.penalties)):  # rows with other penalties: one pass per distinct value
            rows = torch.tensor([p == penalty for p in self.penalties], device=logits.device)
            logits = _penalized(logits, seen & rows[:, None], penalty)
        return logits


def _penalized(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """decode.py's arithmetic exactly: a Python-number penalty (a GPU divides by a host scalar as a multiplication
    by its reciprocal, which a tensor of penalties would not do)."""
    if penalty == 1.0:
        return logits
    return torch.where(seen, torch.where(logits <= 0, logits * penalty, logits / penalty), logits)
