"""Thin typer commands: parse -> load config -> one library call -> rich output."""
