"""An Ollama Modelfile for an exported GGUF: TEMPLATE derived from the model's own chat template, the run's
system prompt as SYSTEM, and a stop parameter per end-of-turn token.

The chat template (Jinja) is rendered once with placeholder messages; the text around each placeholder is
what a turn of that role looks like. Each piece is cut after the end-of-turn token: before the cut it closes
the previous turn, after it opens the next. The Go template (Ollama's `.Messages` form) emits the same pieces,
so Ollama renders a conversation exactly as training did; `turn_format` checks that the pieces are the same
for every turn and raises when a template cannot be written this way.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TurnFormat", "turn_format", "go_template", "modelfile_text"]

_SYSTEM, _USER1, _ASSISTANT, _USER2 = "lk_system_0", "lk_user_1", "lk_assistant_1", "lk_user_2"


@dataclass(frozen=True)
class TurnFormat:
    """The literal text before (`prefix`) and after (`suffix`) a message's content, per role."""

    prefix: dict[str, str]
    suffix: dict[str, str]
    generation_prefix: str  # opens the assistant turn the model is asked to write


def _cut(piece: str, end_of_turn: str) -> tuple[str, str]:
    """'<|im_end|>\\n<|im_start|>user\\n' -> ('<|im_end|>\\n', '<|im_start|>user\\n')."""
    at = piece.find(end_of_turn)
    if at < 0:
        raise ValueError(f"the end-of-turn token {end_of_turn} does not close a turn in the chat template ({piece!r})")
    end = at + len(end_of_turn)
    while end < len(piece) and piece[end] == "\n":
        end += 1
    return piece[:end], piece[end:]


def turn_format(tokenizer, end_of_turn: str) -> TurnFormat:
    messages = [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": _USER1},
                {"role": "assistant", "content": _ASSISTANT}, {"role": "user", "content": _USER2}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    pieces, rest = [], text
    for placeholder in (_SYSTEM, _USER1, _ASSISTANT, _USER2):
        before, found, rest = rest.partition(placeholder)
        if not found:
            raise ValueError(f"the chat template drops or rewrites message content ({placeholder} not rendered)")
        pieces.append(before)
    pieces.append(rest)
    system_suffix, user_prefix = _cut(pieces[1], end_of_turn)
    user_suffix, assistant_prefix = _cut(pieces[2], end_of_turn)
    assistant_suffix, user_prefix_again = _cut(pieces[3], end_of_turn)
    user_suffix_again, generation_prefix = _cut(pieces[4], end_of_turn)
    if (user_prefix, user_suffix) != (user_prefix_again, user_suffix_again):
        raise ValueError("the chat template writes the first and second user turns differently; Ollama's "
                         "template cannot express that")
    fmt = TurnFormat({"system": pieces[0], "user": user_prefix, "assistant": assistant_prefix},
                     {"system": system_suffix, "user": user_suffix, "assistant": assistant_suffix}, generation_prefix)
    if any("{{" in text or "}}" in text for text in (*fmt.prefix.values(), *fmt.suffix.values(), generation_prefix)):
        raise ValueError("the chat template's literal text contains '{{' or '}}', which Go templates would parse")
    return fmt


def go_template(fmt: TurnFormat) -> str:
    """Ollama TEMPLATE text. No `{{-` trim markers: they would also eat the newlines the turns end with."""
    roles = "".join(f'{{{{ {"if" if i == 0 else "else if"} eq .Role "{role}" }}}}{fmt.prefix[role]}{{{{ .Content }}}}'
                    f"{fmt.suffix[role]}" for i, role in enumerate(("system", "user", "assistant")))
    return ("{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}"
            f"{roles}{{{{ end }}}}"
            f'{{{{ if and (ne .Role "assistant") $last }}}}{fmt.generation_prefix}{{{{ end }}}}{{{{ end }}}}')


def _quoted(text: str, what: str) -> str:
    if '"""' in text:
        raise ValueError(f"the {what} contains three double quotes in a row, which a Modelfile cannot hold")
    return f'"""{text}"""'


def modelfile_text(gguf_name: str, fmt: TurnFormat, system_prompt: str, stop_tokens: list[str],
                   sampling: dict[str, float], header: str) -> str:
    """The Modelfile next to `gguf_name` (a relative FROM, so the folder can be moved)."""
    lines = [f"# {line}" for line in header.splitlines()]
    lines += [f"FROM ./{gguf_name}", f"TEMPLATE {_quoted(go_template(fmt), 'chat template')}"]
    if system_prompt:
        lines.append(f"SYSTEM {_quoted(system_prompt, 'system prompt')}")
    lines += [f'PARAMETER stop "{token}"' for token in stop_tokens]
    lines += [f"PARAMETER {name} {value:g}" for name, value in sampling.items()]
    return "\n".join(lines) + "\n"
