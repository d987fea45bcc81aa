"""Batch examples: pad input ids with the pad id and labels with IGNORE_INDEX.

Labels are never derived by matching the pad id: our tokenizers' pad token is the end-of-turn token,
which must stay supervised.
"""

from __future__ import annotations

import torch

from lorakit.data.masking import IGNORE_INDEX
from lorakit.data.render import TokenizedExample

__all__ = ["collate_padded"]


def collate_padded(examples: list[TokenizedExample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example in the batch.

    >>> batch = collate_padded([TokenizedExample([1, 2, 3], [-100, 2, 3]), TokenizedExample([4], [4])], 0)
    >>> batch["input_ids"].tolist(), batch["labels"].tolist(), batch["attention_mask"].tolist()
    ([[1, 2, 3], [4, 0, 0]], [[-100, 2, 3], [4, -100, -100]], [[1, 1, 1], [1, 0, 0]])
    """
    width = max(len(example.input_ids) for example in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        length = len(example.input_ids)
        input_ids[row, :length] = torch.tensor(example.input_ids)
        labels[row, :length] = torch.tensor(example.labels)
        attention_mask[row, :length] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
