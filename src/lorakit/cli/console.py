"""The CLI's two consoles (results on stdout, progress and messages on stderr) and its `--debug` switch.

A module of their own so that command modules share them without importing cli/app.py: app.py imports the
command modules to register them (huggingface_hub's `hf` layout), and a command that imported app.py back would
close an import circle.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console

__all__ = ["console", "err_console", "RootOptions", "root_options"]

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


@dataclass
class RootOptions:
    """Options of the root command that commands read: `--debug` shows tracebacks (and every rank's output)."""

    debug: bool = False


root_options = RootOptions()
