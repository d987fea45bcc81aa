"""Interactive chat: answers each line, leaves cleanly on quit, Ctrl-D and Ctrl-C."""

import pytest

from conftest import tiny_run_config
from lorakit.cli import chat as chat_cli
from lorakit.cli.app import console, run_cli
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
