"""Each running row's most recent answer tokens in one device tensor, for the repetition penalty.

decode.py's `penalize_repeats` takes each row's answer as a Python list and copies it to the device, one
host-to-device copy per row per token (each a stream synchronization on a GPU, where nothing else in a decoding
step waits for the host). Serving many rows, the running batch keeps instead a [rows, width] tensor of token ids
on the device, shifted left by one column as each token arrives: the penalty of a step is then a gather of those
tokens' logits, the penalty's elementwise kernels on [rows, width] values (not on the whole vocabulary) and a
scatter back, for all rows at once, and gives the same logits bit for bit (the same elementwise operations with
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
        """penalize_repeats for every row at once: the logits of the tokens in a row's window divided by its
        penalty (multiplied where <= 0). Only those [rows, width] logits are computed on, not the whole vocabulary."""
        # An empty place points at the row's newest token, which every row has and always penalizes: duplicate
        # places then write the same value, so the scatter is deterministic.
        places = torch.where(self.window & (self.tokens != _NONE), self.tokens, self.tokens[:, -1:])
        values = logits.gather(1, places)
        penalized = values
        for penalty in sorted(set(self.penalties) - {1.0}):
            changed = _penalized(values, penalty)
            if len(set(self.penalties)) > 1:  # only the rows with this penalty (a copy per distinct value)
                rows = torch.tensor([p == penalty for p in self.penalties], device=logits.device)
                changed = torch.where(rows[:, None], changed, penalized)
            penalized = changed
        return logits if penalized is values else logits.scatter(1, places, penalized)


def _penalized(values: torch.Tensor, penalty: float) -> torch.Tensor:
    """decode.py's arithmetic exactly: a Python-number penalty (a GPU divides by a host scalar as a multiplication
    by its reciprocal, which a tensor of penalties would not do)."""
    return torch.where(values <= 0, values * penalty, values / penalty)
