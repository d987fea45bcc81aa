"""`lorakit studio`: the whole pipeline as a local web page (127.0.0.1 by default)."""

from __future__ import annotations

from pathlib import Path

import typer

from lorakit.cli.app import app, console


@app.command()
def studio(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; anything but loopback exposes your data."),
    port: int = typer.Option(7860, "--port", min=1, max=65535, help="Port of the page: http://HOST:PORT/."),
    workdir: Path = typer.Option(Path("."), "--workdir", help="Folder for data/ (uploads) and runs/ (training runs)."),
) -> None:
    """Open the data check, plan, training, evaluation, chat and export in a browser page."""
    import uvicorn

    from lorakit.studio.app import LOOPBACK_HOSTS, create_app

    studio_app = create_app(workdir, LOOPBACK_HOSTS if host in LOOPBACK_HOSTS else None)
    console.print(f"lorakit studio: http://{host}:{port}/  (working folder {studio_app.state.workspace.root}; "
                  "Ctrl-C stops the page, not the training jobs)", highlight=False)
    uvicorn.run(studio_app, host=host, port=port, log_level="warning")
