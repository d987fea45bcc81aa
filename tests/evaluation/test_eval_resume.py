"""A stopped `lorakit eval` keeps every answer it generated, and a rerun generates only the rest (issue 9, point 4)."""

import json

import pytest

from evaluation.eval_runs import TINY_REQUEST, copy_run, evaluated_tiny_run, trained_tiny_run
from lorakit.evaluation import run_eval
from lorakit.evaluation.answer_journal import AnswerJournal
from lorakit.evaluation.run_eval import EvalRequest, evaluate_run
from lorakit.run.layout import JOURNAL_FILES
from lorakit.inference.generate import Answer


class _Stopped(Exception):
    """Stands in for Ctrl-C or a kill in the middle of the safety probes."""


def _count_generated(monkeypatch) -> list[int]:
    counts = []
    real = run_eval.generate_answers

    def counting(run, conversations, settings, **kwargs):
        counts.append(len(conversations))
        return real(run, conversations, settings, **kwargs)

    monkeypatch.setattr(run_eval, "generate_answers", counting)
    return counts


def test_a_stopped_eval_continues_where_it_stopped_and_ends_as_an_uninterrupted_one(
        tiny_llama_dir, tmp_path_factory, tmp_path, monkeypatch):
    workspace = tmp_path_factory.getbasetemp() / "eval-workspace"
    uninterrupted = evaluated_tiny_run(tiny_llama_dir, workspace)
    run = copy_run(trained_tiny_run(tiny_llama_dir, workspace), tmp_path / "run")
    request = EvalRequest(**TINY_REQUEST)  # 1 test question and 18 probes (9 risky, 9 twins), each answered by base and tuned

    def stop_after_five_probe_answers(stage, done, total):
        if stage == "safety" and done == 5:
            raise _Stopped

    with pytest.raises(_Stopped):
        evaluate_run(run, request, stop_after_five_probe_answers)
    journal = run / "eval" / JOURNAL_FILES["safety"]
    assert len(journal.read_text().splitlines()) == 1 + 5  # header + the five answers, on disk already
    assert not (run / "eval" / "safety_answers.jsonl").exists() and not (run / "eval" / "eval.json").exists()

    generated = _count_generated(monkeypatch)
    seen = []
    result = evaluate_run(run, request, lambda stage, done, total: seen.append((stage, done, total)))
    assert generated == [0, 36 - 5]  # quality: both answers kept; safety: only the 31 missing ones
    assert seen[0] == ("quality", 2, 2) and ("safety", 5, 36) in seen and seen[-1] == ("safety", 36, 36)
    for name in ("answers.jsonl", "safety_answers.jsonl"):
        assert (run / "eval" / name).read_text() == (uninterrupted / "eval" / name).read_text(), name
    expected = json.loads((uninterrupted / "eval" / "eval.json").read_text())
    assert (result["quality"], result["safety"]) == (expected["quality"], expected["safety"])
    assert not any((run / "eval" / name).exists() for name in JOURNAL_FILES.values())  # done: journals removed


ANSWER = Answer("Rest.", (11, 12, 2), "stop")


def test_journal_answers_for_other_settings_are_dropped(tmp_path):
    path = tmp_path / "j.jsonl"
    first = AnswerJournal(path, {"generation": {"max_new_tokens": 3}})
    first.record("base/a/x", ANSWER)
    first.close()
    assert AnswerJournal(path, {"generation": {"max_new_tokens": 3}}).answers == {"base/a/x": ANSWER}
    assert AnswerJournal(path, {"generation": {"max_new_tokens": 4}}).answers == {}
    assert not path.exists()


def test_journal_line_cut_by_a_kill_is_skipped_and_the_next_answer_stands_on_its_own_line(tmp_path):
    path = tmp_path / "j.jsonl"
    journal = AnswerJournal(path, {"h": 1})
    journal.record("base/a/x", ANSWER)
    journal.close()
    with path.open("a") as file:
        file.write('{"key": "base/b/y", "te')  # killed mid-write
    again = AnswerJournal(path, {"h": 1})
    assert list(again.answers) == ["base/a/x"]
    again.record("base/b/y", ANSWER)
    again.close()
    assert list(AnswerJournal(path, {"h": 1}).answers) == ["base/a/x", "base/b/y"]
