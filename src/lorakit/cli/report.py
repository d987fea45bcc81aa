"""`lorakit report RUN_DIR`: write the run's self-contained HTML report."""

from __future__ import annotations

from pathlib import Path

import typer

from lorakit.cli.console import console


def report(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="output_dir of a training run, or its final/ adapter."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Where to write it (default RUN_DIR/report.html)."),
) -> None:
    """One HTML file with config, manifest, loss curves, eval and safety tables, data stats and sample answers."""
    from lorakit.evaluation.report import write_report
    from lorakit.evaluation.run_eval import eval_dir
    from lorakit.run.layout import EVAL_FILE

    path = write_report(run_dir, output)
    console.print(f"report: {path}")
    if not (eval_dir(run_dir) / EVAL_FILE).is_file():
        console.print(f"[dim]No evaluation yet: `lorakit eval {run_dir} --safety` fills those sections.[/]")
