"""Text that is not text: lone UTF-16 surrogates, which no tokenizer, UTF-8 encoder or JSON writer accepts.

JSON can spell one (`"\\ud800"` without its pair), and Python hands a command-line argument's undecodable
bytes over as surrogates too (PEP 383: byte 0xFF arrives as U+DCFF). Left in, they reach the tokenizer and fail
there with a TypeError far from the file, line or option that holds them; found here, they are named.
"""

from __future__ import annotations

import re

__all__ = ["lone_surrogate", "surrogate_problem", "find_lone_surrogate"]

_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate(text: str) -> int | None:
    """The index of the first lone surrogate in `text`, or None (json.loads joins a valid pair into one character).

    >>> lone_surrogate("ok"), lone_surrogate("a\\ud800b"), lone_surrogate("\\U0001f600")
    (None, 1, None)
    """
    found = _SURROGATE.search(text)
    return found.start() if found else None


def surrogate_problem(text: str) -> str | None:
    """What is wrong with `text`, in words, or None.

    >>> surrogate_problem("dose \\udcff mg")
    'byte 0xFF at character 6 is not UTF-8'
    >>> surrogate_problem("x\\ud83d")
    'character 2 is a lone UTF-16 surrogate (\\\\ud83d) without its pair, which is not text'
    """
    index = lone_surrogate(text)
    if index is None:
        return None
    code = ord(text[index])
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte of a command-line argument (surrogateescape)
        return f"byte 0x{code - 0xDC00:02X} at character {index + 1} is not UTF-8"
    return f"character {index + 1} is a lone UTF-16 surrogate (\\u{code:04x}) without its pair, which is not text"


def find_lone_surrogate(value: object, path: str = "") -> tuple[str, str] | None:
    """The first string inside a parsed JSON value that holds a lone surrogate: (its path, the problem).

    >>> find_lone_surrogate({"messages": [{"role": "user", "content": "\\ud800"}]})
    ('messages[0].content', 'character 1 is a lone UTF-16 surrogate (\\\\ud800) without its pair, which is not text')
    """
    if isinstance(value, str):
        problem = surrogate_problem(value)
        return (path or "value", problem) if problem else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        name = f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else str(key)
        if isinstance(key, str) and (problem := surrogate_problem(key)):
            return f"{path or 'record'} (a key)", problem
        found = find_lone_surrogate(item, name)
        if found:
            return found
    return None
