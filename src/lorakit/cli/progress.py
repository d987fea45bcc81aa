"""Rich progress bar for the training loop: step, loss, tokens/s and ETA."""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from lorakit.cli.app import err_console

__all__ = ["RichTrainingReporter"]


class RichTrainingReporter:
    """Implements lorakit.training.metrics.ProgressReporter on stderr (stdout stays for answers)."""

    def __init__(self) -> None:
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
        if fields and not err_console.is_terminal:
            # Without a terminal (CI logs, nohup, pipes) the live bar never redraws: log one line per log step.
            task = self.progress.tasks[0]
            eta = f"{task.time_remaining:.0f}s" if task.time_remaining is not None else "-"
            err_console.print(f"step {step}/{task.total:.0f}  loss {task.fields['loss']}  val {task.fields['val']}  "
                              f"{task.fields['tps']} tok/s  ETA {eta}", highlight=False)

    def message(self, text: str) -> None:
        (self.progress.console if self.task is not None else err_console).print(text, highlight=False)

    def finish(self) -> None:
        self.progress.stop()
