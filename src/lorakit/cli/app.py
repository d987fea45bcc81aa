"""The `lorakit` command: registers the command modules and maps LorakitError to a message + exit code.

The registry only registers (huggingface_hub's `hf` layout): each command module defines its commands and
never imports this module; their shared consoles live in cli/console.py. This is the one place that turns known
errors into user-facing messages; `--debug` shows tracebacks.
"""

from __future__ import annotations

import errno
import logging
import sys

import typer
from rich.logging import RichHandler
from rich.markup import escape

from lorakit.cli import chat, data, doctor, eval, export, plan, push, report, review, serve, studio, train
from lorakit.cli.console import console, err_console, root_options
from lorakit.errors import LorakitError

__all__ = ["app", "main", "run_cli"]

app = typer.Typer(
    name="lorakit",
    help="Fine-tune, evaluate and chat with LoRA/QLoRA medical-education assistants on one GPU.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        from lorakit import __version__

        console.print(f"lorakit {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks and debug logs."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors."),
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print lorakit's version and exit."),
) -> None:
    root_options.debug = debug
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, handlers=[_log_handler()], force=True)
    logging.getLogger("lorakit").setLevel(level)
    if not debug:
        # Weight-loading bars from transformers are noise next to our own progress; Hub download bars stay.
        import warnings

        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    for noisy in ("transformers", "peft", "accelerate", "huggingface_hub", "urllib3", "httpx", "httpx2", "httpcore", "matplotlib",
                  "gguf"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.ERROR)


def _log_handler() -> logging.Handler:
    """Rich on a terminal; off one (CI logs, `| tee`) plain lines that are never wrapped, so they stay greppable."""
    if err_console.is_terminal:
        return RichHandler(console=err_console, show_path=False, show_time=False)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)-8s %(message)s"))
    return handler


# Commands in the order `lorakit --help` lists them (typer lists single commands before groups).
app.command()(chat.chat)
app.add_typer(data.data_app, name="data")
app.command()(doctor.doctor)
app.add_typer(eval.eval_app, name="eval")
app.command("export")(export.export_command)
app.command()(plan.plan)
app.command("push")(push.push_command)
app.command()(report.report)
app.add_typer(review.review_app, name="review")
app.command()(serve.serve)
app.command()(studio.studio)
app.command()(train.train)


_OOM_HINT = ("Close other programs on the GPU (nvidia-smi lists them), or load the base model in 4 bits "
             "(model.quantization: nf4); `lorakit plan CONFIG` shows what fits.")
_OOM_HINTS = {
    "eval": "Pass a lower --max-new-tokens, or set eval.batch_size lower in the run's config.yaml (answers are "
            "generated that many at a time); or " + _OOM_HINT[0].lower() + _OOM_HINT[1:],
    "chat": "Pass a lower --max-new-tokens; or " + _OOM_HINT[0].lower() + _OOM_HINT[1:],
}
_PATH_ERRNOS = {errno.ENOENT, errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.EACCES, errno.EPERM, errno.EROFS,
                errno.ENAMETOOLONG}


def run_cli(argv: list[str]) -> int:
    """Run one command line and return its exit code; known errors become one message, no traceback."""
    import click

    try:
        result = app(args=argv, prog_name="lorakit", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except LorakitError as exc:
        if root_options.debug:
            raise
        err_console.print(f"[bold red]error:[/] {escape(exc.message)}", soft_wrap=True)
        if exc.hint:
            err_console.print(f"[yellow]hint:[/] {escape(exc.hint)}", soft_wrap=True)
        return exc.exit_code
    except OSError as exc:
        # A path the user gave that cannot be written or read (a file where a folder must be, a folder where a file
        # must be, no permission). Errors without a path (and a full disk, DiskFullError) are not the user's path.
        path = exc.filename2 or exc.filename
        if root_options.debug or path is None or exc.errno not in _PATH_ERRNOS:
            raise
        err_console.print(f"[bold red]error:[/] {escape(str(path))}: {escape(exc.strerror or str(exc))}",
                          soft_wrap=True)
        err_console.print("[yellow]hint:[/] check the path: its folders must be folders (not files) you may write "
                          "to, and an output file cannot replace a folder", soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    except (typer.Exit, click.exceptions.Exit) as exc:
        return exc.exit_code
    except (typer.Abort, click.exceptions.Abort):
        err_console.print("aborted")
        return 1
    # typer >= 0.25 vendors click, so usage errors may come from either copy.
    except (typer.TyperException, click.ClickException) as exc:
        exc.show()
        return exc.exit_code
    except Exception as exc:
        # Out of GPU memory outside training's step (which re-plans and retries itself): loading, eval, chat.
        # Told by name, so that this module does not import torch.
        if root_options.debug or type(exc).__name__ != "OutOfMemoryError":
            raise
        command = argv[0] if argv else "lorakit"
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else "CUDA out of memory"
        err_console.print(f"[bold red]error:[/] Out of GPU memory in `lorakit {escape(command)}` ({escape(detail)}).",
                          soft_wrap=True)
        err_console.print(f"[yellow]hint:[/] {escape(_OOM_HINTS.get(command, _OOM_HINT))}", soft_wrap=True)
        return 3


def main() -> None:
    """Console-script entry point."""
    sys.exit(run_cli(sys.argv[1:]))
