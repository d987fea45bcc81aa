"""Token statistics and the histogram PNG."""

from __future__ import annotations

from data_files import write_lines

from lorakit.data.records import read_conversations
from lorakit.data.render import render_conversation
from lorakit.data.stats import token_stats, write_histogram


def qa(question: str = "What is BP?", answer: str = "Blood pressure.") -> dict:
    return {"instruction": question, "response": answer}


def test_stats_count_lengths_truncation_and_trained_tokens(tokenizer, tmp_path):
    path = write_lines(tmp_path, "d.jsonl", qa("Q", "A"), qa("What is BP?", "Blood pressure."), qa("Q", "word " * 40))
    conversations = list(read_conversations(path))
    stats = token_stats(iter(conversations), tokenizer, "Be brief.", max_length=30)
    full = [render_conversation(c, tokenizer, "Be brief.", 10_000) for c in conversations]
    cut = [render_conversation(c, tokenizer, "Be brief.", 30) for c in conversations]
    lengths = [len(e.input_ids) for e in full]
    assert lengths == [21, 26, 60]
    assert (stats.examples, stats.tokens, stats.lengths, stats.truncated) == (3, 107, lengths, 1)
    assert stats.trained_tokens == sum(e.trained_tokens for e in cut) == 2 + 4 + 12
    assert stats.context_tokens == sum(len(e.input_ids) for e in cut) - stats.trained_tokens
    assert stats.percentiles() == {"min": 21, "p50": 26, "p90": 60, "p95": 60, "p99": 60, "max": 60}
    assert stats.to_json()["truncated_share"] == 0.3333
    png = write_histogram(stats, tmp_path / "plots" / "h.png", "d.jsonl")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_empty_stats():
    stats = token_stats(iter([]), None, "", max_length=8)
    assert (stats.examples, stats.percentiles(), stats.truncated_share) == (0, {}, 0.0)
