"""The chat template a run renders with: the model's own, or an override named in `model.chat_template`.

An override is a template shipped with lorakit (`chatml`, `phi4`, `llama3`) or a Jinja file. It is checked
when the tokenizer loads, by the same span check that builds every training mask (data/chat_spans.py): a
template whose assistant turns cannot be located exactly, each answer followed by one end-of-turn special token
of this tokenizer, is refused with its name before any data is rendered.
"""

from __future__ import annotations

import hashlib
import weakref
from importlib import resources
from pathlib import Path

from lorakit.data.chat_spans import AnswerSpanError, locate_answers, render_chats, special_token_texts
from lorakit.errors import ConfigError

__all__ = ["NAMED_TEMPLATES", "read_chat_template", "apply_chat_template_override", "end_of_turn_token",
           "chat_template_identity"]

NAMED_TEMPLATES = ("chatml", "phi4", "llama3")
# One conversation that exercises what training needs: a system turn, two answers, a turn after an answer.
_PROBE = [
    {"role": "system", "content": "Be careful."},
    {"role": "user", "content": "What is a fever?"},
    {"role": "assistant", "content": "A body temperature above the normal range."},
    {"role": "user", "content": "And a chill?"},
    {"role": "assistant", "content": "A feeling of cold with shivering."},
]


def read_chat_template(value: str) -> tuple[str, str]:
    """(name shown in messages, template text) for a shipped name or a .jinja file path."""
    if value in NAMED_TEMPLATES:
        text = resources.files("lorakit.data").joinpath("templates", f"{value}.jinja").read_text(encoding="utf-8")
        return f"'{value}'", text
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError("model.chat_template", [
            f"'{value}' is neither a template lorakit ships ({', '.join(NAMED_TEMPLATES)}) nor a Jinja file "
            f"(looked at {path.resolve()})"])
    text = path.read_text(encoding="utf-8")
    if "messages" not in text:
        raise ConfigError("model.chat_template", [f"{path} does not look like a chat template (it never reads "
                                                  "`messages`)"])
    return f"'{path}'", text


def apply_chat_template_override(tokenizer, value: str) -> None:
    """Give `tokenizer` the template `value` names, after checking that its answers can be masked exactly."""
    name, text = read_chat_template(value)
    previous = tokenizer.chat_template
    tokenizer.chat_template = text
    try:
        render_chats(tokenizer, [_PROBE])
    except AnswerSpanError as exc:
        tokenizer.chat_template = previous
        raise ConfigError("model.chat_template", [
            f"the chat template {name} cannot be used with the tokenizer of '{tokenizer.name_or_path}': answer "
            f"{exc.answer} of a test conversation: {exc.reason}; pick a template whose turn markers are special "
            "tokens of this model, or leave model.chat_template unset to use the model's own"]) from None
    except Exception as exc:  # a Jinja syntax or runtime error in a user's file  # noqa: BLE001
        tokenizer.chat_template = previous
        raise ConfigError("model.chat_template", [f"the chat template {name} does not render: {exc}"]) from None


# end_of_turn_token's answers, by id(tokenizer): generation asks once per answer, and the probe renders a whole
# conversation. Keyed by identity because tokenizers are not hashable in every transformers version; an entry
# is dropped when its tokenizer is collected, and recomputed when the template or the special tokens change.
_END_OF_TURN: dict[int, tuple[tuple, str | AnswerSpanError]] = {}


def end_of_turn_token(tokenizer) -> str:
    """The special token the template closes each answer with (generation must stop there).

    Raises AnswerSpanError when the template's answers cannot be located (a template training refuses)."""
    key = (tokenizer.chat_template, special_token_texts(tokenizer))
    cached = _END_OF_TURN.get(id(tokenizer))
    if cached is None or cached[0] != key:
        if cached is None:
            weakref.finalize(tokenizer, _END_OF_TURN.pop, id(tokenizer), None)
        cached = _END_OF_TURN[id(tokenizer)] = (key, _locate_end_of_turn(tokenizer))
    found = cached[1]
    if isinstance(found, AnswerSpanError):
        raise AnswerSpanError(found.index, found.answer, found.reason)
    return found


def _locate_end_of_turn(tokenizer) -> str | AnswerSpanError:
    [chat] = locate_answers(tokenizer, [_PROBE])
    if isinstance(chat, AnswerSpanError):
        return chat
    answer = chat.answers[-1]
    return answer.expected.removeprefix(_PROBE[-1]["content"].strip()).removeprefix(_PROBE[-1]["content"])


def chat_template_identity(value: str | None) -> dict:
    """For the resume check: the override and a hash of its text (a file edited between runs is a change)."""
    if value is None:
        return {}
    _, text = read_chat_template(value)
    return {"chat_template_sha256": hashlib.sha256(text.encode()).hexdigest()}
