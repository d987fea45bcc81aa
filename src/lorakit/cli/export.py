"""`lorakit export RUN_DIR --format FORMAT`: merged safetensors, GGUF, Ollama, or a clean adapter folder."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.markup import escape

from lorakit.cli.console import console, err_console
from lorakit.cli.permissions import allow_pickle_option, permissions, trust_remote_code_option


def step_printer():
    """on_step callback: one line per step with the seconds since the export started (stderr)."""
    started = time.perf_counter()

    def on_step(step: str, description: str) -> None:
        err_console.print(f"[dim]{time.perf_counter() - started:6.1f}s[/] [bold]{step}[/] {escape(description)}",
                          highlight=False)

    return on_step


def export_command(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="output_dir of a finished training run."),
    format: str = typer.Option(..., "--format", "-f", help="merged | gguf | ollama | adapter"),
    output: Path | None = typer.Option(None, "--output", "-o", help="Folder to create (default RUN_DIR/export/FORMAT)."),
    quant: str | None = typer.Option(None, "--quant", help="GGUF weights: f16 (default), q8_0 or q4_0."),
    dtype: str | None = typer.Option(None, "--dtype", help="Merged weights: auto (default: fp16 when the weights fit "
                                     "it, else fp32), fp16, fp32, or bf16 (lossy: rounds away much of the fine-tune)."),
    skip_fidelity: bool = typer.Option(False, "--skip-fidelity", help="Do not compare the exported model with the "
                                       "run (recorded in lorakit_export.json and the model card)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the output folder if it exists."),
    trust_remote_code: bool = trust_remote_code_option(),
    allow_pickle: bool = allow_pickle_option(),
) -> None:
    """Export a fine-tuned run so that other tools (transformers, llama.cpp, Ollama, peft) can use it."""
    if quant is not None and format not in ("gguf", "ollama"):
        raise typer.BadParameter(f"--quant applies to --format gguf or ollama, not {format}")
    if dtype is not None and format != "merged":
        raise typer.BadParameter(f"--dtype applies to --format merged, not {format} (GGUF: --quant)")
    from lorakit.export.run_export import ExportRequest, export_run

    result = export_run(run_dir, ExportRequest(format, output, quant or "f16", dtype or "auto", not skip_fidelity,
                                                 overwrite, permissions(trust_remote_code, allow_pickle)), step_printer())
    console.print(f"exported {format} to {result.output}: {', '.join(result.files)}", highlight=False)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    _print_fidelity(result.fidelity)
    if format == "ollama":
        console.print(f"use it: cd {result.output} && ollama create my-model -f Modelfile && ollama run my-model",
                      highlight=False)


def _print_fidelity(fidelity: dict | None) -> None:
    if fidelity is None:  # an adapter export copies the run's own files
        return
    if not fidelity["skipped"]:
        console.print(f"fidelity: {fidelity['token_agreement']:.1%} greedy token agreement with the run (threshold "
                      f"{fidelity['min_agreement']:.0%}); logit difference max {fidelity['max_logit_diff']:.3f}, mean "
                      f"{fidelity['mean_logit_diff']:.3f}; {fidelity['answer_tokens']} answer tokens of "
                      f"{fidelity['questions']} {escape(fidelity['source'])}", highlight=False)
    if fidelity["warning"]:
        console.print(f"[bold red]warning:[/] {escape(fidelity['warning'])}", highlight=False)
