"""`lorakit push RUN_DIR --repo-id NAME`: upload a run to the Hugging Face Hub with its model card."""

from __future__ import annotations

from pathlib import Path

import typer

from lorakit.cli.console import console
from lorakit.cli.export import step_printer
from lorakit.cli.permissions import allow_pickle_option, permissions, trust_remote_code_option


def push_command(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="output_dir of a finished training run."),
    repo_id: str = typer.Option(..., "--repo-id", help="owner/name of the Hub repository (created if missing)."),
    private: bool = typer.Option(True, "--private/--public", help="Repository visibility (private by default)."),
    what: str = typer.Option("adapter", "--what", help="adapter | merged | gguf"),
    quant: str | None = typer.Option(None, "--quant", help="GGUF weights with --what gguf: f16, q8_0 or q4_0."),
    approved: bool = typer.Option(False, "--i-have-approval",
                                  help="Publishing a run trained on data with privacy findings was approved "
                                  "(recorded in the model card)."),
    trust_remote_code: bool = trust_remote_code_option(),
    allow_pickle: bool = allow_pickle_option(),
) -> None:
    """Upload the adapter (or merged model, or GGUF) with a model card; the data itself is never uploaded."""
    from lorakit.export.push import PUSH_WHAT, PushRequest, push_run

    if what not in PUSH_WHAT:
        raise typer.BadParameter(f"--what must be one of {', '.join(PUSH_WHAT)}, not {what}")
    if quant is not None and what != "gguf":
        raise typer.BadParameter("--quant applies to --what gguf only")
    result = push_run(run_dir, PushRequest(repo_id, private, what, approved, quant or "f16",
                                                 permissions(trust_remote_code, allow_pickle)), step_printer())
    console.print(f"uploaded {what} ({'private' if result.private else 'public'}) to {result.url}", highlight=False)
