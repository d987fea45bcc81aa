"""`lorakit chat RUN_DIR`: interactive streamed chat, or one answer with --question."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from lorakit.cli.console import console, err_console
from lorakit.cli.permissions import allow_pickle_option, permissions, trust_remote_code_option
from lorakit.data.unicode_text import surrogate_problem

if TYPE_CHECKING:
    from lorakit.run.source import Permissions


def _settings(run, max_new_tokens: int | None, temperature: float | None):
    from lorakit.inference.generate import GenerationSettings

    settings = GenerationSettings.from_config(run.config)
    if max_new_tokens is not None:
        settings = replace(settings, max_new_tokens=max_new_tokens)
    if temperature is not None:
        settings = replace(settings, temperature=temperature)
    return settings


def _stream_one(session, question: str, disclaimer: str) -> None:
    answer = session.ask(question)
    try:
        for piece in answer:
            console.print(piece, end="", highlight=False, markup=False, soft_wrap=True)
    finally:
        answer.close()  # on Ctrl-C: the generation thread stops here, not during the next question
    console.print()
    if session.last_truncated:
        console.print(f"[cut at max_new_tokens={session.settings.max_new_tokens}]", style="dim", markup=False,
                      highlight=False)
    if disclaimer:
        console.print(f"\n[dim]{disclaimer}[/]")


def answer_once(run_dir: Path, question: str, *, max_new_tokens: int | None, temperature: float | None,
                allowed: Permissions) -> None:
    """Load the run (its base model allowed what `allowed` says), print the question and the streamed answer
    followed by the disclaimer."""
    from lorakit.inference.chat import ChatSession
    from lorakit.inference.generate import load_run

    run = load_run(run_dir, permissions=allowed)
    session = ChatSession(run, _settings(run, max_new_tokens, temperature))
    print_answer(question, session, run.config.inference.disclaimer)


def print_answer(question: str, session, disclaimer: str) -> None:
    """The question, then the session's streamed answer to it, then the disclaimer."""
    console.print(f"[bold cyan]question:[/] {question}", highlight=False)
    console.print("[bold green]answer:[/] ", end="")
    _stream_one(session, question, disclaimer)


def chat(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR",
                                   help="output_dir of a training run, its final/ adapter, or one of its checkpoints/step-N."),
    question: str | None = typer.Option(None, "--question", "-q", help="Answer this one question and exit."),
    max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", min=1, help="Override inference.max_new_tokens."),
    temperature: float | None = typer.Option(None, "--temperature", min=0.0, help="0 = greedy; overrides the config."),
    trust_remote_code: bool = trust_remote_code_option(),
    allow_pickle: bool = allow_pickle_option(),
) -> None:
    """Chat with a fine-tuned run (its system prompt and disclaimer). Type 'quit' or press Ctrl-D to leave."""
    if question is not None:
        if not question.strip():
            raise typer.BadParameter("--question is empty")
        if problem := surrogate_problem(question):  # undecodable argv bytes arrive as surrogates (PEP 383)
            raise typer.BadParameter(f"--question is not text: {problem}. Pass the question as UTF-8.")
        answer_once(run_dir, question, max_new_tokens=max_new_tokens, temperature=temperature,
                    allowed=permissions(trust_remote_code, allow_pickle))
        return
    from lorakit.inference.chat import ChatSession
    from lorakit.inference.generate import load_run

    run = load_run(run_dir, permissions=permissions(trust_remote_code, allow_pickle))
    session = ChatSession(run, _settings(run, max_new_tokens, temperature))
    step = run.trained.checkpoint_step if run.trained else None
    what = f"checkpoint step {step} ({run.adapter_dir})" if step is not None else str(run.adapter_dir)
    err_console.print(f"Chatting with {what}. Type 'quit' or press Ctrl-D to leave.", highlight=False)
    while True:
        try:
            text = console.input("[bold cyan]you>[/] ").strip()
        except (EOFError, KeyboardInterrupt):
            console.print()
            break
        if text.lower() in {"quit", "exit", ":q"}:
            break
        if not text:
            continue
        console.print("[bold green]lorakit>[/] ", end="")
        try:
            _stream_one(session, text, run.config.inference.disclaimer)
        except KeyboardInterrupt:
            console.print("\n[dim](answer interrupted)[/]")
