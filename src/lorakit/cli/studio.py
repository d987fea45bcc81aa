"""`lorakit studio`: the whole pipeline as a local web page (127.0.0.1 by default)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from lorakit.cli.console import console, err_console


def studio(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; anything but loopback exposes your data."),
    port: int = typer.Option(7860, "--port", min=1, max=65535, help="Port of the page: http://HOST:PORT/."),
    workdir: Path = typer.Option(Path("."), "--workdir", help="Folder for data/ (uploads) and runs/ (training runs)."),
) -> None:
    """Open the data check, plan, training, evaluation, chat and export in a browser page."""
    import uvicorn

    from lorakit.runtime.local_http import check_can_listen, is_loopback, trusted_hosts
    from lorakit.studio.app import create_app

    check_can_listen(host, port)  # a taken port or unknown --host: one error with a hint, before any output
    if not is_loopback(host):
        err_console.print(
            f"[bold yellow]warning:[/] the studio listens on {escape(host)}, not only on this machine, and it has no "
            "login: anyone who can reach this address can read and upload the data files, start training and "
            "other jobs, and export and push models to the Hugging Face Hub with this machine's login. Use the "
            "default --host 127.0.0.1 unless this network is trusted.", soft_wrap=True)
    studio_app = create_app(workdir, trusted_hosts(host))
    console.print(f"lorakit studio: http://{host}:{port}/  (working folder {studio_app.state.workspace.root}; "
                  "Ctrl-C stops the page, not the training jobs)", highlight=False)
    uvicorn.run(studio_app, host=host, port=port, log_level="warning")
