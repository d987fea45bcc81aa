"""`lorakit train CONFIG`: validate config and data, fine-tune, save the adapter."""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

from lorakit.cli.console import console, err_console, root_options
from lorakit.config import load_config
from lorakit.errors import LorakitError

# How long a rank other than 0 waits before exiting with an error that rank 0 prints (_let_rank_zero_report_first).
RANK_ZERO_GRACE_S = 3.0


def _relaunch(processes: int, lorakit_args: list[str]) -> int:
    """Run `lorakit ARGS` under torchrun with `processes` workers; returns torchrun's exit code."""
    import subprocess

    from lorakit.runtime.launch import check_process_count, torchrun_command

    check_process_count(processes)
    command = torchrun_command(processes, lorakit_args)
    console.print(f"starting {processes} processes: {shlex.join(command)}", highlight=False, soft_wrap=True)
    child = subprocess.Popen(command)
    try:
        return child.wait()
    except KeyboardInterrupt:  # Ctrl-C reached torchrun too (same process group): it stops the workers
        return child.wait()


def _quiet_unless_rank_zero() -> None:
    """Under a launcher, rank 0 alone prints (progress, messages, errors) and logs; the others stay silent.

    An error every rank raises alike (bad data, a NaN loss, out of memory at micro-batch 1) is printed once,
    by rank 0; --debug shows every rank's traceback."""
    import logging

    from lorakit.runtime.distributed import launch_ranks

    if launch_ranks().is_main or root_options.debug:
        return
    console.quiet = err_console.quiet = True
    logging.getLogger("lorakit").setLevel(logging.ERROR)
    for handler in logging.getLogger().handlers:  # libraries' INFO lines (e.g. liger's) come once, from rank 0
        handler.setLevel(logging.ERROR)


def _let_rank_zero_report_first() -> None:
    """On ranks other than 0, wait a moment before exiting with an error: the launcher stops every process as
    soon as one fails, and an error all ranks raise alike should be printed (by rank 0) before that."""
    import time

    from lorakit.runtime.distributed import launch_ranks

    if not launch_ranks().is_main:
        time.sleep(RANK_ZERO_GRACE_S)


def resume_point(run_dir: Path) -> str:
    """Where `--resume` would pick up: the newest checkpoint's step, or step 0."""
    from lorakit.run.checkpoints import list_checkpoints

    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        return "no checkpoint was written yet, so it starts again from step 0"
    return f"from the checkpoint at step {int(checkpoints[-1].name.removeprefix('step-'))}"


def train(
    config_path: Path = typer.Argument(..., metavar="CONFIG", help="YAML run config (see configs/ and examples/)."),
    overrides: list[str] = typer.Option([], "--set", help="Override a config value, e.g. --set training.max_steps=10."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest good checkpoint in output_dir."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete a previous run in output_dir and start again."),
    allow_phi: bool = typer.Option(False, "--allow-phi", help="Train even if the privacy scan finds identifiers."),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Train on valid lines only, listing the skipped ones."),
    allow_pickle: bool = typer.Option(
        False, "--allow-pickle", help="Allow .bin/.pt pickle weights for the base model (safetensors only by default)."
    ),
    gpus: int = typer.Option(None, "--gpus", min=1, help="Train data-parallel on N GPUs of this machine (starts "
                             "torchrun; on a CPU-only machine N processes with gloo)."),
) -> None:
    """Fine-tune the configured model with LoRA/QLoRA on the configured data."""
    if resume and overwrite:
        raise typer.BadParameter("--resume and --overwrite contradict each other; pick one.")
    if gpus is not None:
        flags = [name for name, given in (("--resume", resume), ("--overwrite", overwrite), ("--allow-phi", allow_phi),
                                          ("--skip-invalid", skip_invalid), ("--allow-pickle", allow_pickle)) if given]
        raise typer.Exit(_relaunch(gpus, ["train", str(config_path), *[p for o in overrides for p in ("--set", o)],
                                          *flags]))
    _quiet_unless_rank_zero()
    extra = [f"data.allow_phi={str(allow_phi).lower()}"] if allow_phi else []
    extra += ["data.skip_invalid=true"] if skip_invalid else []
    extra += ["model.allow_pickle=true"] if allow_pickle else []
    config = load_config(config_path, list(overrides) + extra)
    from lorakit.pipeline.train_evaluate import train_evaluate

    flags = [name for name, given in (("--allow-phi", allow_phi), ("--skip-invalid", skip_invalid),
                                      ("--allow-pickle", allow_pickle)) if given]
    command = ["lorakit", "train", str(config_path), *[part for o in overrides for part in ("--set", o)], *flags]
    train_evaluate(config, ConsolePipelineView(command, Path(config.output_dir)), resume=resume, overwrite=overwrite)


class ConsolePipelineView:
    """The train -> eval -> demo answer sequence (pipeline/train_evaluate.py) as `lorakit train` prints it.

    `command` is this command line, for the `--resume` hint printed when training is interrupted."""

    def __init__(self, command: list[str], output_dir: Path):
        self.command, self.output_dir = command, output_dir

    def answering_without_training(self, output_dir: Path) -> None:
        console.print(f"mode: inference: answering inference.demo_question with the run in {output_dir} "
                      "(nothing is trained)", highlight=False)

    def training_reporter(self):
        from lorakit.cli.progress import RichTrainingReporter

        return RichTrainingReporter()

    @contextmanager
    def training(self) -> Iterator[None]:
        try:
            yield
        except LorakitError:
            _let_rank_zero_report_first()
            raise
        except KeyboardInterrupt:
            err_console.print(f"interrupted: continue with `{shlex.join(self.command + ['--resume'])}` "
                              f"({resume_point(self.output_dir)})", highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None

    def trained(self, result) -> None:
        console.print(f"[green]done:[/] {result.steps} steps; adapter in {result.adapter_dir}")

    def evaluation_progress(self):
        from lorakit.cli.eval import answer_progress

        return answer_progress()

    def evaluated(self, run_dir: Path, request, result: dict) -> None:
        from lorakit.cli.eval import print_evaluation

        print_evaluation(run_dir, request, result)

    def report_written(self, path: Path) -> None:
        console.print(f"report: {path}")

    def demo_answer(self, question: str, session, disclaimer: str) -> None:
        from lorakit.cli.chat import print_answer

        print_answer(question, session, disclaimer)
