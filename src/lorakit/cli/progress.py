"""Rich progress bar for the training loop: step, loss, tokens/s and ETA."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from lorakit.cli.app import err_console

__all__ = ["RichTrainingReporter", "PLAIN_LINE_INTERVAL_S"]

# Off a terminal, a progress line at least this often even between log steps, so a CI log shows the run is alive.
PLAIN_LINE_INTERVAL_S = 120.0


class RichTrainingReporter:
    """Implements lorakit.training.metrics.ProgressReporter on stderr (stdout stays for answers).

    On a terminal the live bar redraws; off one (CI logs, nohup, `| tee`) it never does, so a plain line is
    printed at each log step and at least every `interval_s` seconds of `clock`, whatever logging_steps says.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, interval_s: float = PLAIN_LINE_INTERVAL_S) -> None:
        self.clock, self.interval_s = clock, interval_s
        self.last_line_at = clock()
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("val {task.fields[val]}"),
            TextColumn("{task.fields[tps]} tok/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=err_console,
            transient=False,
        )
        self.task = None

    def start(self, total_steps: int, first_step: int) -> None:
        self.last_line_at = self.clock()
        self.progress.start()
        self.task = self.progress.add_task("train", total=total_steps, completed=first_step, loss="-", val="-", tps="-")

    def step(self, step: int, metrics: dict) -> None:
        fields = {}
        if "train_loss" in metrics:
            fields["loss"] = f"{metrics['train_loss']:.4f}"
            fields["tps"] = f"{metrics['tokens_per_second']:,.0f}"
        if "val_loss" in metrics:
            fields["val"] = f"{metrics['val_loss']:.4f}"
        self.progress.update(self.task, completed=step, **fields)
        now = self.clock()
        if not err_console.is_terminal and (fields or now - self.last_line_at >= self.interval_s):
            self.last_line_at = now
            task = self.progress.tasks[0]
            eta = f"{task.time_remaining:.0f}s" if task.time_remaining is not None else "-"
            err_console.print(f"step {step}/{task.total:.0f}  loss {task.fields['loss']}  val {task.fields['val']}  "
                              f"{task.fields['tps']} tok/s  ETA {eta}", highlight=False)

    def message(self, text: str) -> None:
        (self.progress.console if self.task is not None else err_console).print(text, highlight=False)

    def finish(self) -> None:
        self.progress.stop()
