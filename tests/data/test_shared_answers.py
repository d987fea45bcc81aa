"""One answer given to different questions (ten records of the guide's dataset share one): `data check`
reports each group with every file:line, and every split keeps a group on one side."""

from __future__ import annotations

import json

from data_files import write_lines

from lorakit.cli.app import run_cli
from lorakit.data.records import Conversation, Message
from lorakit.data.splits import split_conversations
from lorakit.data.validate import check_files

SHARED = "Please consult a healthcare professional for advice about your situation."


def qa(question: str, answer: str) -> dict:
    return {"instruction": question, "response": answer}


def test_check_reports_each_group_with_count_and_every_line(tmp_path):
    path = write_lines(tmp_path, "guide.jsonl", qa("Q1?", SHARED), qa("Q2?", "A2."), qa("Q3?", SHARED.upper()),
                       qa("Q4?", "Own answer."), qa("Q5?", "A2"), qa("Q6?", SHARED))
    report = check_files([path])
    assert [issue.headline() for issue in report.sorted_issues()] == [
        f"{path}:1: warning: 3 records give the same answer to different questions: {path}:1, {path}:3, {path}:6",
        f"{path}:2: warning: 2 records give the same answer to different questions: {path}:2, {path}:5",
    ]
    assert {issue.code for issue in report.issues} == {"shared-answer"}
    assert report.exit_code() == 0 and report.exit_code(strict=True) == 2


def test_copies_of_one_record_are_duplicates_not_a_shared_answer(tmp_path):
    path = write_lines(tmp_path, "dup.jsonl", qa("Q1?", "A."), qa("Q1?", "A."))
    assert [issue.code for issue in check_files([path]).issues] == ["duplicate"]


def test_data_check_prints_the_group_and_what_to_do(tmp_path, capsys):
    path = write_lines(tmp_path, "guide.jsonl", qa("Q1?", SHARED), qa("Q2?", "A2."), qa("Q3?", SHARED))
    assert run_cli(["data", "check", str(path)]) == 0
    assert capsys.readouterr().out.splitlines()[:2] == [
        f"{path}:1: warning: 2 records give the same answer to different questions: {path}:1, {path}:3",
        "    fix: Check that the answer fits each question. lorakit's splits (`data split`, and the split in "
        "`train`) keep such records on one side, so no test answer was seen in training.",
    ]


def test_shared_answers_across_given_split_files_are_named_as_such(tmp_path):
    train = write_lines(tmp_path, "train.jsonl", qa("Q1?", SHARED), qa("Q2?", "A2."))
    test = write_lines(tmp_path, "test.jsonl", qa("Q3?", SHARED))
    [issue] = check_files([train, test]).issues
    assert issue.headline() == (f"{train}:1: warning: 2 records give the same answer to different questions "
                                f"(across the train and test splits): {train}:1, {test}:1")
    assert issue.hint == "Move them into one split: a test answer seen in training overstates quality."


def guide_like(n: int = 112, shared: int = 10) -> list[Conversation]:
    """Like the guide's dataset: n records, `shared` of them (spread through the file) with one answer."""
    return [Conversation((Message("user", f"Question {i}?"),
                          Message("assistant", SHARED if i % (n // shared) == 0 and i // (n // shared) < shared
                                  else f"Answer {i}.")), "guide.jsonl", i + 1) for i in range(n)]


def test_the_seeded_split_keeps_a_shared_answer_group_on_one_side():
    conversations = guide_like()
    assert sum(c.messages[1].content == SHARED for c in conversations) == 10
    sides = set()
    for seed in range(40):
        splits = split_conversations(conversations, 0.1, 0.1, seed)
        homes = [name for name in ("train", "validation", "test")
                 if any(c.messages[1].content == SHARED for c in getattr(splits, name))]
        assert len(homes) == 1, (seed, homes)
        sides.add(homes[0])
        assert sum(splits.sizes().values()) == 112 and min(splits.sizes().values()) >= 1
    assert "train" in sides and sides != {"train"}  # the group moves with the seed, like any example


def test_splits_of_records_with_answers_of_their_own_are_unchanged():
    """Grouping only touches shared answers: these members are what the code before grouping chose (checked
    against commit bc11f75)."""
    conversations = [Conversation((Message("user", f"q{i}"), Message("assistant", f"a{i}"))) for i in range(20)]
    splits = split_conversations(conversations, 0.1, 0.2, seed=3)
    assert sorted(c.messages[0].content for c in splits.test) == ["q17", "q18", "q19", "q3"]
    assert sorted(c.messages[0].content for c in splits.validation) == ["q0", "q5"]


def test_data_split_writes_a_shared_answer_group_into_one_file(tmp_path, capsys):
    source = write_lines(tmp_path, "guide.jsonl", *[qa(c.messages[0].content, c.messages[1].content)
                                                    for c in guide_like()])
    assert run_cli(["data", "split", str(source), "--out", str(tmp_path / "out"), "--seed", "7"]) == 0
    holding = [name for name in ("train", "validation", "test")
               if SHARED in (tmp_path / "out" / f"{name}.jsonl").read_text()]
    assert len(holding) == 1
    written = [json.loads(line) for name in ("train", "validation", "test")
               for line in (tmp_path / "out" / f"{name}.jsonl").read_text().splitlines()]
    assert sum(record["response"] == SHARED for record in written) == 10
