"""Interactive chat: answers each line, leaves cleanly on quit, Ctrl-D and Ctrl-C."""

import threading

import pytest

from conftest import tiny_run_config
from lorakit.cli import chat as chat_cli
from lorakit.cli.app import run_cli
from lorakit.cli.console import console
from lorakit.inference.chat import ChatSession
from lorakit.inference.generate import GenerationSettings, load_run
from lorakit.training.loop import train


@pytest.fixture(scope="module")
def trained_run(tiny_llama_dir, tmp_path_factory):
    from conftest import write_qa_jsonl

    tmp = tmp_path_factory.mktemp("chat")
    train(tiny_run_config(tiny_llama_dir, write_qa_jsonl(tmp / "qa.jsonl"), tmp / "run", max_steps=1))
    return tmp / "run"


def _scripted_input(monkeypatch, lines):
    script = iter(lines)

    def fake_input(prompt=""):
        item = next(script)
        if isinstance(item, BaseException):
            raise item
        return item

    monkeypatch.setattr(console, "input", fake_input)


@pytest.mark.parametrize("ending", ["quit", EOFError(), KeyboardInterrupt()], ids=["quit", "ctrl-d", "ctrl-c"])
def test_interactive_chat_answers_then_exits_cleanly(trained_run, monkeypatch, capsys, ending):
    asked = []
    original = chat_cli._stream_one
    monkeypatch.setattr(chat_cli, "_stream_one", lambda s, q, d: (asked.append(q), original(s, q, d)))
    _scripted_input(monkeypatch, ["What is insulin?", "", "And asthma?", ending])
    assert run_cli(["chat", str(trained_run), "--max-new-tokens", "3"]) == 0
    assert asked == ["What is insulin?", "And asthma?"]
    out = capsys.readouterr().out
    assert out.count("Not medical advice.") == 2


def _generation_threads():
    return [t for t in threading.enumerate() if t.name == "lorakit-generate" and t.is_alive()]


def test_closing_an_answer_early_stops_its_generation_thread(trained_run):
    """Issue 9, point 4: Ctrl-C in chat left generate() running into the next question."""
    # The base model alone (random weights) does not end its turn within 5,000 tokens, so without the stop
    # event the thread would still be generating when close() returns.
    session = ChatSession(load_run(trained_run, base_only=True), GenerationSettings(max_new_tokens=5000))
    answer = session.ask("What is insulin?")
    assert next(answer)
    answer.close()
    assert _generation_threads() == [] and session.history == []


def test_ctrl_c_while_an_answer_prints_stops_it_before_the_next_question(trained_run, monkeypatch, capsys):
    real_print = console.print
    interrupted, threads_at_next_question = [], []

    def print_then_ctrl_c(*args, **kwargs):
        real_print(*args, **kwargs)
        if kwargs.get("soft_wrap") and not interrupted:  # the first piece of the first answer
            interrupted.append(True)
            raise KeyboardInterrupt

    original = chat_cli._stream_one
    monkeypatch.setattr(chat_cli, "_stream_one", lambda s, q, d: (threads_at_next_question.append(_generation_threads()),
                                                                  original(s, q, d)))
    monkeypatch.setattr(console, "print", print_then_ctrl_c)
    _scripted_input(monkeypatch, ["What is insulin?", "And asthma?", "quit"])
    assert run_cli(["chat", str(trained_run), "--max-new-tokens", "200"]) == 0
    assert threads_at_next_question == [[], []]
    out = capsys.readouterr().out
    assert "(answer interrupted)" in out and out.count("Not medical advice.") == 1


def test_an_answer_cut_at_max_new_tokens_is_marked(trained_run, capsys):
    assert run_cli(["chat", str(trained_run), "--question", "What is insulin?", "--max-new-tokens", "3"]) == 0
    assert "[cut at max_new_tokens=3]" in capsys.readouterr().out
