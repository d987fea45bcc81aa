"""AnswerText: streamed pieces add up to the answer cut at the first stop string, stripped, whatever the split."""

from __future__ import annotations

import doctest

import pytest

import lorakit.inference.answer_text as answer_text
from lorakit.inference.answer_text import AnswerText


def test_doctests():
    assert doctest.testmod(answer_text).failed == 0


def shaped(pieces: list[str], stop: tuple[str, ...]) -> tuple[str, bool]:
    text = AnswerText(stop)
    sent = "".join(text.feed(p) for p in pieces) + text.finish()
    assert sent == text.sent
    return sent, text.stopped


ANSWER = "  Rest, fluids and paracetamol.\n\nSee a doctor if it lasts.  \n"


@pytest.mark.parametrize("stop, expected", [
    ((), ("Rest, fluids and paracetamol.\n\nSee a doctor if it lasts.", False)),
    (("\n\n",), ("Rest, fluids and paracetamol.", True)),
    (("para", "doctor"), ("Rest, fluids and", True)),
    (("doctor", "fluids"), ("Rest,", True)),
    (("absent",), ("Rest, fluids and paracetamol.\n\nSee a doctor if it lasts.", False)),
])
def test_every_split_of_the_answer_gives_the_same_text(stop, expected):
    assert shaped([ANSWER], stop) == expected
    assert shaped(list(ANSWER), stop) == expected  # one character per piece
    for cut in range(len(ANSWER)):
        assert shaped([ANSWER[:cut], ANSWER[cut:]], stop) == expected


def test_nothing_after_the_stop_string():
    text = AnswerText(("END",))
    assert [text.feed(p) for p in ["Yes", " E", "N", "D", " more", " text"]] == ["Yes", "", "", "", "", ""]
    assert text.finish() == "" and text.sent == "Yes"


def test_a_held_back_prefix_that_was_no_stop_string_is_sent_later():
    text = AnswerText(("ENDING",))
    assert text.feed("Drink water. END") == "Drink water."
    assert text.feed("URE it.") == " ENDURE it."
    assert text.finish() == "" and not text.stopped
