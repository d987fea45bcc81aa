"""A tiny interpreter for the subset of Go's text/template that lorakit's Ollama TEMPLATE uses, written
independently of the exporter so a test can render a conversation the way Ollama would.

Supported: literal text; {{ range $i, $_ := .Messages }}; {{ $last := eq (len (slice $.Messages $i)) 1 }};
{{ if eq .Role "x" }} / {{ else if ... }} / {{ end }}; {{ if and (ne .Role "x") $last }}; {{ .Content }}.
"""

from __future__ import annotations

import re

_ACTION = re.compile(r"\{\{(.*?)\}\}", re.S)


def _tokens(template: str) -> list[tuple[str, str]]:
    out, position = [], 0
    for match in _ACTION.finditer(template):
        if match.start() > position:
            out.append(("text", template[position:match.start()]))
        out.append(("action", match.group(1).strip()))
        position = match.end()
    if position < len(template):
        out.append(("text", template[position:]))
    return out


def _condition(expr: str, message: dict, variables: dict) -> bool:
    if m := re.fullmatch(r'eq \.Role "(\w+)"', expr):
        return message["role"] == m.group(1)
    if m := re.fullmatch(r'and \(ne \.Role "(\w+)"\) \$last', expr):
        return message["role"] != m.group(1) and variables["$last"]
    raise ValueError(f"unsupported condition: {expr}")


def _parse(tokens: list, index: int, stop: set[str]) -> tuple[list, int]:
    """Nodes until an action in `stop`; returns (nodes, index of that action)."""
    nodes = []
    while index < len(tokens):
        kind, value = tokens[index]
        if kind == "action" and (value in stop or value.startswith("else")) and (value in stop or "else" in stop):
            return nodes, index
        if kind == "action" and value.startswith("range "):
            body, index = _parse(tokens, index + 1, {"end"})
            nodes.append(("range", body))
        elif kind == "action" and value.startswith("if "):
            branches, index = [], index
            condition = value[3:]
            while True:
                body, index = _parse(tokens, index + 1, {"end", "else"})
                branches.append((condition, body))
                closing = tokens[index][1]
                if closing == "end":
                    break
                condition = closing.removeprefix("else if ").strip()
            nodes.append(("if", branches))
        else:
            nodes.append((kind, value))
        index += 1
    return nodes, index


def _render(nodes: list, messages: list[dict], message: dict | None, variables: dict) -> str:
    out = []
    for kind, value in nodes:
        if kind == "text":
            out.append(value)
        elif kind == "range":
            for i, item in enumerate(messages):
                out.append(_render(value, messages, item, {**variables, "$i": i}))
        elif kind == "if":
            for condition, body in value:
                if _condition(condition, message, variables):
                    out.append(_render(body, messages, message, variables))
                    break
        elif value == ".Content":
            out.append(message["content"])
        elif value == "$last := eq (len (slice $.Messages $i)) 1":
            variables["$last"] = variables["$i"] == len(messages) - 1
        else:
            raise ValueError(f"unsupported action: {value}")
    return "".join(out)


def render_go_template(template: str, messages: list[dict]) -> str:
    nodes, _ = _parse(_tokens(template), 0, set())
    return _render(nodes, messages, None, {})
