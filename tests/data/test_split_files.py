"""`write_split_files`: deterministic files that read back as the same conversations; it refuses bad data, an
input file as a target (DataError) and existing targets without `overwrite` (OutputExistsError)."""

from __future__ import annotations

import pytest
from data_files import write_lines

from lorakit.data.records import read_conversations
from lorakit.data.split_files import write_split_files
from lorakit.errors import DataError, OutputExistsError


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


def test_split_refuses_an_input_file_as_target(tmp_path):
    source = write_lines(tmp_path, "train.jsonl", *[qa(f"Question {i}?", f"Answer {i}.") for i in range(20)])
    before = source.read_bytes()
    with pytest.raises(DataError, match="is an input file; splitting never modifies its input, so nothing was written"):
        write_split_files([source], tmp_path, 0.1, 0.1, seed=1, overwrite=True)
    assert source.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["train.jsonl"]


def test_split_refuses_existing_targets_unless_overwrite(tmp_path):
    source = write_lines(tmp_path, "all.jsonl", *[qa(f"Question {i}?", f"Answer {i}.") for i in range(20)])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "test.jsonl").write_text("old\n")
    with pytest.raises(OutputExistsError, match="test.jsonl already exists; nothing was written"):
        write_split_files([source], tmp_path / "out", 0.1, 0.1, seed=1)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["test.jsonl"]
    written = write_split_files([source], tmp_path / "out", 0.1, 0.1, seed=1, overwrite=True)
    assert sum(count for _, count in written.values()) == 20
    assert (tmp_path / "out" / "test.jsonl").read_text() != "old\n"
