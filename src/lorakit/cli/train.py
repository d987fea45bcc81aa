"""`lorakit train CONFIG`: validate config and data, fine-tune, save the adapter."""

from __future__ import annotations

import shlex
from pathlib import Path

import typer

from lorakit.cli.app import app, console, err_console
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

    from lorakit.cli.app import _state
    from lorakit.runtime.distributed import launch_ranks

    if launch_ranks().is_main or _state["debug"]:
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


@app.command()
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
    from lorakit.run.source import Permissions

    # The config given to this command (not the run's saved copy) says what the base model may do.
    allowed = Permissions(config.model.trust_remote_code, config.model.allow_pickle)
    if config.mode == "inference":  # the guide's mode: answer from the finished run in output_dir, train nothing
        from lorakit.cli.chat import answer_once

        console.print(f"mode: inference: answering inference.demo_question with the run in {config.output_dir} "
                      "(nothing is trained)", highlight=False)
        answer_once(Path(config.output_dir), config.inference.demo_question, max_new_tokens=None, temperature=None,
                    allowed=allowed)
        return
    from lorakit.cli.progress import RichTrainingReporter
    from lorakit.training.loop import train as run_training

    try:
        result = run_training(config, resume=resume, overwrite=overwrite, reporter=RichTrainingReporter())
    except LorakitError:
        _let_rank_zero_report_first()
        raise
    except KeyboardInterrupt:
        flags = [name for name, given in (("--allow-phi", allow_phi), ("--skip-invalid", skip_invalid),
                                          ("--allow-pickle", allow_pickle)) if given]
        command = ["lorakit", "train", str(config_path), *[part for o in overrides for part in ("--set", o)], *flags]
        err_console.print(f"interrupted: continue with `{shlex.join(command + ['--resume'])}` "
                          f"({resume_point(Path(config.output_dir))})", highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    console.print(f"[green]done:[/] {result.steps} steps; adapter in {result.adapter_dir}")
    if config.eval.after_training:
        from lorakit.cli.eval import evaluate_and_report
        from lorakit.evaluation.run_eval import EvalRequest

        evaluate_and_report(result.run_dir, EvalRequest(quality=True, safety=config.eval.safety, permissions=allowed))
    if config.mode == "both":
        from lorakit.cli.chat import answer_once

        answer_once(result.run_dir, config.inference.demo_question, max_new_tokens=None, temperature=None,
                    allowed=allowed)
