"""review.jsonl: append-only, one whole line per review, durable; a line cut by a crash never costs another review."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from lorakit.errors import DataError
from lorakit.review.store import Review, append_review, read_reviews

REVIEW_FILE = "review.jsonl"  # spelled here on purpose: the test checks the file on disk (run/layout.py names it)
REVIEW = Review(run_id="demo", step=20, source="test", item_id="qa.jsonl:7", model="tuned", prompt="What is BP?",
                answer="A vitamin.", verdict="bad", corrected="Blood pressure.", note="wrong organ system",
                reviewer="Dr. Osei")


def test_each_review_is_one_complete_json_line_with_every_field(tmp_path):
    stored = append_review(tmp_path, REVIEW)
    second = append_review(tmp_path, replace(REVIEW, model="base", verdict="good", corrected=None, note=None,
                                             reviewer=None, step=None, time="2026-12-07T06:00:00+00:00"))
    lines = (tmp_path / REVIEW_FILE).read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0]) == {
        "run_id": "demo", "step": 20, "source": "test", "item_id": "qa.jsonl:7", "model": "tuned",
        "prompt": "What is BP?", "answer": "A vitamin.", "verdict": "bad", "corrected": "Blood pressure.",
        "note": "wrong organ system", "reviewer": "Dr. Osei", "time": stored.time}
    assert stored.time.endswith("+00:00") and second.time == "2026-12-07T06:00:00+00:00"
    assert read_reviews(tmp_path) == [stored, second]


def test_a_line_cut_by_a_crash_is_skipped_and_the_next_review_stands_on_its_own_line(tmp_path):
    first = append_review(tmp_path, REVIEW)
    path = tmp_path / REVIEW_FILE
    whole = first.to_line()
    with path.open("ab") as file:  # a crash part-way through writing the second review
        file.write(whole[: len(whole) // 2])
    assert read_reviews(tmp_path) == [first]
    third = append_review(tmp_path, replace(REVIEW, item_id="qa.jsonl:9"))
    assert read_reviews(tmp_path) == [first, third]
    assert len(path.read_bytes().split(b"\n")) == 4  # first, the cut line (ended), third, and the final newline


def test_a_damaged_line_that_no_crash_could_make_is_an_error_naming_it(tmp_path):
    append_review(tmp_path, REVIEW)
    with (tmp_path / REVIEW_FILE).open("a") as file:
        file.write('{"verdict": "good"}\n')
    append_review(tmp_path, REVIEW)
    with pytest.raises(DataError) as caught:
        read_reviews(tmp_path)
    assert str(caught.value).startswith(f"{tmp_path / REVIEW_FILE}:2: is not a review: expected the fields")


@pytest.mark.parametrize("change, message", [
    ({"verdict": "ok"}, "review verdict must be one of good, bad, not 'ok'"),
    ({"model": "judge"}, "review model must be one of base, tuned, not 'judge'"),
    ({"corrected": "  "}, "a corrected answer, when given, is not empty"),
])
def test_a_review_with_an_impossible_value_is_refused_before_it_is_written(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        append_review(tmp_path, replace(REVIEW, **change))
    assert not (tmp_path / REVIEW_FILE).exists()
