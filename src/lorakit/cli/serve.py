"""`lorakit serve RUN_DIR`: an OpenAI-compatible endpoint over a trained run."""

from __future__ import annotations

from pathlib import Path

import typer

from lorakit.cli.permissions import allow_pickle_option, permissions, trust_remote_code_option
from lorakit.config import ServeConfig

_DEFAULTS = ServeConfig()


def serve(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="output_dir of a training run, or an adapter folder."),
    host: str = typer.Option(_DEFAULTS.host, "--host",
                             help="Address to bind; anything but loopback exposes the model."),
    port: int = typer.Option(_DEFAULTS.port, "--port", min=1, max=65535, help="TCP port to listen on."),
    api_key: str | None = typer.Option(
        None, "--api-key", envvar="LORAKIT_API_KEY",
        help="Require 'Authorization: Bearer KEY' (or set LORAKIT_API_KEY).",
    ),
    batch_size: int = typer.Option(_DEFAULTS.batch_size, "--batch-size", min=1, max=256,
                                   help="Requests generating together (continuous batching); 1 answers one at a time."),
    queue_size: int = typer.Option(_DEFAULTS.queue_size, "--queue-size", min=1, max=1024,
                                   help="Requests that may wait behind those generating; more get 503."),
    no_disclaimer: bool = typer.Option(False, "--no-disclaimer", help="Do not append the run's disclaimer to answers."),
    trust_remote_code: bool = trust_remote_code_option(),
    allow_pickle: bool = allow_pickle_option(),
) -> None:
    """Serve a fine-tuned run at /v1/chat/completions (OpenAI-compatible; streaming; 127.0.0.1 by default)."""
    from lorakit.inference.serve import serve_run

    if api_key is not None and not api_key.strip():
        raise typer.BadParameter("--api-key is empty")
    options = ServeConfig(host=host, port=port, api_key=api_key, batch_size=batch_size, queue_size=queue_size,
                          disclaimer=not no_disclaimer)
    serve_run(run_dir, options, permissions(trust_remote_code, allow_pickle))
