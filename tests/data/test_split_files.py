"""`write_split_files`: deterministic files that read back as the same conversations."""

from __future__ import annotations

import pytest
from data_files import write_lines

from lorakit.data.records import read_conversations
from lorakit.data.split_files import write_split_files
from lorakit.errors import DataError


def qa(question: str = "What is BP?", answer: str = "Blood pressure.") -> dict:
    return {"instruction": question, "response": answer}


def test_split_is_deterministic_complete_and_keeps_duplicates_together(tmp_path):
    rows = [qa(f"Question {i}?", f"Answer {i}.") for i in range(20)] + [qa("Question 3?", "Answer 3.")]
    chat = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Hello."}]}
    sources = [write_lines(tmp_path, "qa.jsonl", *rows), write_lines(tmp_path, "chat.jsonl", chat)]
    first = write_split_files(sources, tmp_path / "a", 0.2, 0.2, seed=7)
    second = write_split_files(sources, tmp_path / "b", 0.2, 0.2, seed=7)
    for name in ("train", "validation", "test"):
        assert (tmp_path / "a" / f"{name}.jsonl").read_bytes() == (tmp_path / "b" / f"{name}.jsonl").read_bytes()
    assert {name: count for name, (_, count) in first.items()} == {"train": 14, "validation": 4, "test": 4}
    assert second["train"][1] == 14
    read_back = {name: [c.messages for c in read_conversations(path)] for name, (path, _) in first.items()}
    originals = sorted(str(c.messages) for source in sources for c in read_conversations(source))
    assert sorted(str(m) for messages in read_back.values() for m in messages) == originals
    with_dup = [name for name, convs in read_back.items() if any("Question 3?" in m[0].content for m in convs)]
    assert len(with_dup) == 1


def test_split_refuses_data_with_errors(tmp_path):
    source = write_lines(tmp_path, "bad.jsonl", qa(), {"instruction": "Q"})
    with pytest.raises(DataError, match="1 problem in the data; nothing was written"):
        write_split_files([source], tmp_path / "out", 0.1, 0.1, seed=1)
    assert not (tmp_path / "out").exists()
