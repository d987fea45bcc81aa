"""`lorakit eval RUN_DIR`: base vs fine-tuned on the test split (and the safety probes), then the report."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from lorakit.cli.app import app, console, err_console

_CHANGE_STYLE = {"better": "green", "worse": "bold red", "same": "dim"}


def _change(base: float | None, tuned: float | None, lower_is_better: bool) -> str:
    if base is None or tuned is None or tuned == base:
        return "[dim]no change[/]"
    better = (tuned < base) == lower_is_better
    return f"[{'green' if better else 'bold red'}]{'better' if better else 'worse'} ({tuned - base:+.3f})[/]"


def _number(value: float | None, fmt: str = "{:.3f}") -> str:
    return "n/a" if value is None else fmt.format(value)


def print_quality(quality: dict) -> None:
    table = Table(title=f"Answer quality: {quality['answered']} of {quality['test_examples']} test questions "
                        f"answered greedily; loss over all of them", title_justify="left")
    for column, justify in (("measure", "left"), ("base", "right"), ("fine-tuned", "right"), ("change", "left")):
        table.add_column(column, justify=justify)
    base, tuned = quality["base"], quality["tuned"]
    for key, label, lower_is_better in (("loss", "test loss", True), ("perplexity", "perplexity", True),
                                        ("rouge_l", "ROUGE-L", False), ("token_f1", "token F1", False)):
        table.add_row(label, _number(base[key]), _number(tuned[key]), _change(base[key], tuned[key], lower_is_better))
    console.print(table)


def _disclaimer_line(safety: dict) -> str:
    """The disclaimer is lorakit's, not the model's: said apart from the pass rates, which never count it."""
    if "judged_on" not in safety:
        return ("[bold red]these pass rates were scored by an older lorakit on the answer plus its disclaimer; "
                "run `lorakit eval --safety` again[/]")
    if not safety["disclaimer"]:
        return "disclaimer: none (inference.disclaimer is empty)"
    return f"disclaimer appended by lorakit to every answer shown (not scored): {escape(safety['disclaimer'])}"


def print_safety(safety: dict) -> None:
    from lorakit.evaluation.safety_rules import CATEGORY_LABELS

    table = Table(title=f"Safety probes: {safety['probes']} prompts, pass = every rule of the category holds "
                        f"for the model's own words", title_justify="left")
    for column, justify in (("category", "left"), ("probes", "right"), ("base passed", "right"),
                            ("fine-tuned passed", "right"), ("model deferred itself", "right"), ("", "left")):
        table.add_column(column, justify=justify)
    for c in safety["categories"]:
        base, tuned = c["base"], c["tuned"]
        flag = "[bold red]WORSE: " + "; ".join(c["worse_reasons"]) + "[/]" if c["worse"] else ""
        table.add_row(CATEGORY_LABELS.get(c["category"], c["category"]), str(base["probes"]),
                      f"{base['pass_rate']:.0%}", f"{tuned['pass_rate']:.0%}",
                      f"{base['deferral_rate']:.0%} -> {tuned['deferral_rate']:.0%}", flag)
    console.print(table)
    console.print(_disclaimer_line(safety))
    worse = safety["worse_categories"]
    if worse:
        console.print(f"[bold red]fine-tuning made {len(worse)} categor{'y' if len(worse) == 1 else 'ies'} worse:[/] "
                      + ", ".join(CATEGORY_LABELS.get(c, c) for c in worse))
    else:
        console.print("[green]no safety category got worse with fine-tuning[/]")


def _is_checkpoint(path: Path) -> bool:
    from lorakit.inference.run_source import resolve_run_source

    return resolve_run_source(path).checkpoint_step is not None


def evaluate_and_report(run_dir: Path, request, *, report: bool = True) -> dict:
    """Evaluate with a progress bar, print the tables, write the report; `lorakit train` calls this too."""
    from lorakit.evaluation.report import write_report
    from lorakit.evaluation.run_eval import eval_dir, evaluate_run

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True) as progress:
        tasks: dict[str, int] = {}

        def on_answer(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(f"answering: {stage}", total=total)
            progress.update(tasks[stage], completed=done)

        result = evaluate_run(run_dir, request, on_answer)
    if request.quality:
        print_quality(result["quality"])
    if request.safety:
        print_safety(result["safety"])
    console.print(f"answers and numbers: {eval_dir(run_dir)}")
    if report and _is_checkpoint(run_dir):
        console.print("report: not written for a checkpoint; `lorakit report RUN_DIR` describes the run once it "
                      "has finished", highlight=False)
    elif report:
        console.print(f"report: {write_report(run_dir)}")
    return result


@app.command("eval")
def eval_command(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="output_dir of a training run, its final/ adapter, "
                                   "or one of its checkpoints/step-N (results in RUN_DIR/eval/step-N)."),
    safety: bool = typer.Option(False, "--safety", help="Also run the clinical safety probes."),
    skip_quality: bool = typer.Option(False, "--skip-quality", help="Skip test-split loss and answer quality."),
    limit: int | None = typer.Option(None, "--limit", min=1,
                                     help="Answer at most N test questions and N probes per category (CPU runs)."),
    probes: list[Path] = typer.Option([], "--probes", help="An extra probe file (JSONL: id, category, prompt); repeatable."),
    max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", min=1, help="Override eval.max_new_tokens."),
    report: bool = typer.Option(True, "--report/--no-report", help="Write RUN_DIR/report.html afterwards."),
    fail_on_worse: bool = typer.Option(False, "--fail-on-worse",
                                       help="Exit with code 1 when fine-tuning made any safety category worse."),
) -> int:
    """Compare the fine-tuned model with its base model: test loss, ROUGE-L, token F1, and safety probes."""
    if skip_quality and not safety:
        raise typer.BadParameter("--skip-quality leaves nothing to do; add --safety.")
    if probes and not safety:
        raise typer.BadParameter("--probes needs --safety.")
    if fail_on_worse and not safety:
        raise typer.BadParameter("--fail-on-worse needs --safety.")
    from lorakit.evaluation.run_eval import EvalRequest

    request = EvalRequest(quality=not skip_quality, safety=safety, limit=limit,
                          probe_files=tuple(str(p) for p in probes), max_new_tokens=max_new_tokens)
    result = evaluate_and_report(run_dir, request, report=report)
    return 1 if fail_on_worse and result["safety"]["worse_categories"] else 0
