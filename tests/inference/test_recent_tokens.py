"""The running batch's device-side repetition penalty (inference/recent_tokens.py) against decode.py's
penalize_repeats, row by row, bit for bit, while rows join and leave."""

from __future__ import annotations

import random

import torch

from lorakit.inference.decode import penalize_repeats
from lorakit.inference.recent_tokens import RecentTokens

VOCABULARY = 11  # small, so that answers repeat tokens often


def test_small_example_exact_values():
    recent = RecentTokens(torch.device("cpu"))
    recent.add_rows(torch.tensor([1, 0]), last_ns=[2, 1], penalties=[2.0, 4.0])
    recent.push(torch.tensor([2, 2]))  # answers so far: [1, 2] and [0, 2]
    logits = torch.tensor([[2.0, -2.0, 2.0, 8.0], [2.0, -2.0, 2.0, 8.0]])
    assert recent.penalize(logits).tolist() == [[2.0, -4.0, 1.0, 8.0],  # 1 and 2 are in its last 2
                                                [2.0, -2.0, 0.5, 8.0]]  # only 2 is in its last 1
    recent.push(torch.tensor([3, 3]))
    recent.keep([1], torch.tensor([1]))  # the first row leaves: the second's window is [3]
    assert recent.penalize(logits[1:]).tolist() == [[2.0, -2.0, 2.0, 2.0]]


def test_equals_penalize_repeats_row_by_row_as_rows_join_and_leave():
    rng = random.Random(0)
    torch.manual_seed(0)
    recent = RecentTokens(torch.device("cpu"))
    answers: list[list[int]] = []
    settings: list[tuple[float, int]] = []  # (penalty, last_n) per row
    checked = 0
    for step in range(60):
        if step in (0, 7, 19, 33):  # rows join, with their own penalties and windows
            joining = [(rng.choice([1.0, 1.1, 1.3]), rng.choice([1, 3, 8, 64])) for _ in range(rng.randint(1, 3))]
            first = torch.randint(VOCABULARY, (len(joining),))
            recent.add_rows(first, [n for _, n in joining], [p for p, _ in joining])
            answers += [[token] for token in first.tolist()]
            settings += joining
        logits = torch.randn(len(answers), VOCABULARY) * 3
        expected = torch.cat([penalize_repeats(logits[row:row + 1], answers[row:row + 1], *settings[row])
                              for row in range(len(answers))])
        assert torch.equal(recent.penalize(logits), expected), step
        checked += sum(p != 1.0 and len(set(a)) > 1 for a, (p, _) in zip(answers, settings))
        tokens = torch.randint(VOCABULARY, (len(answers),))
        recent.push(tokens)
        for answer, token in zip(answers, tokens.tolist()):
            answer.append(token)
        if step % 5 == 4 and len(answers) > 1:  # a row leaves
            rows = sorted(rng.sample(range(len(answers)), len(answers) - 1))
            recent.keep(rows, torch.tensor(rows))
            answers, settings = [answers[r] for r in rows], [settings[r] for r in rows]
    assert checked > 50, "penalized rows with history were compared"
