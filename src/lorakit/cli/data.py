"""`lorakit data ...`: check, stats, redact and split datasets before a GPU is touched."""

from __future__ import annotations

from pathlib import Path

import typer

from lorakit.cli.app import app, console
from lorakit.data.records import read_conversations

data_app = typer.Typer(help="Validate, scan and describe training data.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("check")
def check(files: list[Path] = typer.Argument(..., help="JSONL data files.")) -> None:
    """Validate every line of the data files."""
    for path in files:
        count = sum(1 for _ in read_conversations(path))
        console.print(f"{path}: {count} examples, no errors")
