"""Rich progress bar for the training loop: step, loss, tokens/s, ETA (and reward margin and accuracy when
preference tuning).

The ETA is the mean step time since training (or the resume) started times the steps left: rich's own
estimate only looks at the last 30 seconds and shows nothing once one step takes longer than that (issue 25:
`ETA -` on every line for 56 minutes of a busy 2-core machine).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lorakit.cli.console import err_console

__all__ = ["RichTrainingReporter", "PLAIN_LINE_INTERVAL_S", "eta_seconds", "format_eta", "reward_text"]

# Off a terminal, a progress line at least this often even between log steps, so a CI log shows the run is alive.
PLAIN_LINE_INTERVAL_S = 120.0


def eta_seconds(steps_done: int, elapsed_s: float, steps_left: int) -> float | None:
    """Mean step time so far times the steps left; None before the first step.

    >>> eta_seconds(10, 2000.0, 90)
    18000.0
    >>> eta_seconds(0, 5.0, 100) is None
    True
    """
    return None if steps_done <= 0 else elapsed_s / steps_done * steps_left


def format_eta(seconds: float | None) -> str:
    """'-' when unknown, else h/m/s: 45s, 3m20s, 5h00m.

    >>> [format_eta(s) for s in (None, 45.2, 200.0, 18000.0)]
    ['-', '45s', '3m20s', '5h00m']
    """
    if seconds is None:
        return "-"
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def reward_text(metrics: dict) -> str:
    """Preference tuning's progress: the mean reward margin and the share of pairs whose chosen answer wins.

    >>> reward_text({"rewards_margin": 0.0312, "rewards_accuracy": 0.75})
    'margin 0.031 acc 75%'
    """
    return f"margin {metrics['rewards_margin']:.3f} acc {metrics['rewards_accuracy']:.0%}"


class RichTrainingReporter:
    """Implements lorakit.training.metrics.ProgressReporter on stderr (stdout stays for answers).

    On a terminal the live bar redraws; off one (CI logs, nohup, `| tee`) it never does, so a plain line is
    printed at each log step and at least every `interval_s` seconds of `clock`, whatever logging_steps says.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, interval_s: float = PLAIN_LINE_INTERVAL_S) -> None:
        self.clock, self.interval_s = clock, interval_s
        self.last_line_at = clock()
        self.started_at, self.first_step = self.last_line_at, 0
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("val {task.fields[val]}"),
            TextColumn("{task.fields[tps]} tok/s"),
            TextColumn("{task.fields[rewards]}"),  # preference tuning: reward margin and accuracy
            TimeElapsedColumn(),
            TextColumn("ETA {task.fields[eta]}"),
            console=err_console,
            transient=False,
        )
        self.task = None

    def start(self, total_steps: int, first_step: int) -> None:
        self.last_line_at = self.started_at = self.clock()
        self.first_step = first_step
        self.progress.start()
        self.task = self.progress.add_task("train", total=total_steps, completed=first_step, loss="-", val="-", tps="-",
                                           eta="-", rewards="")

    def step(self, step: int, metrics: dict) -> None:
        fields = {}
        if "train_loss" in metrics:
            fields["loss"] = f"{metrics['train_loss']:.4f}"
            fields["tps"] = f"{metrics['tokens_per_second']:,.0f}"
        if "val_loss" in metrics:
            fields["val"] = f"{metrics['val_loss']:.4f}"
        if "rewards_margin" in metrics:
            fields["rewards"] = reward_text(metrics)
        now = self.clock()
        total = self.progress.tasks[0].total
        fields["eta"] = format_eta(eta_seconds(step - self.first_step, now - self.started_at, int(total) - step))
        self.progress.update(self.task, completed=step, **fields)
        logged = "train_loss" in metrics or "val_loss" in metrics
        if not err_console.is_terminal and (logged or now - self.last_line_at >= self.interval_s):
            self.last_line_at = now
            task = self.progress.tasks[0]
            err_console.print(f"step {step}/{task.total:.0f}  loss {task.fields['loss']}  val {task.fields['val']}  "
                              f"{task.fields['tps']} tok/s  ETA {fields['eta']}"
                              + (f"  {task.fields['rewards']}" if task.fields["rewards"] else ""), highlight=False)

    def message(self, text: str) -> None:
        (self.progress.console if self.task is not None else err_console).print(text, highlight=False)

    def finish(self) -> None:
        self.progress.stop()
