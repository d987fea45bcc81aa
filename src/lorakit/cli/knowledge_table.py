"""The terminal table of `lorakit eval --knowledge`: base vs fine-tuned accuracy with 95% intervals."""

from __future__ import annotations

from rich.table import Table

from lorakit.cli.console import console

_VERDICT_STYLE = {"gained": "green", "lost": "bold red", "no detectable change": "dim"}


def _accuracy(numbers: dict) -> str:
    low, high = numbers["ci95"]
    return f"{numbers['accuracy']:.1%} [{low:.1%}, {high:.1%}]"


def knowledge_rows(knowledge: dict) -> list[tuple[str, ...]]:
    """One row per benchmark: label, items, base, tuned (each with its interval), controls, McNemar p, verdict."""
    rows = []
    for b in knowledge["benchmarks"]:
        c = b["controls"]
        rows.append((b["label"], str(b["items"]), _accuracy(b["base"]), _accuracy(b["tuned"]),
                     f"{c['chance']:.0%} / {c['best_constant']:.0%} ({c['best_constant_letter']})",
                     f"{b['mcnemar']['p_value']:.3f}", b["verdict"]))
    return rows


def print_knowledge(knowledge: dict) -> None:
    limit = knowledge["limit_per_benchmark"]
    sample = f"a fixed sample of at most {limit} items per benchmark" if limit else "every shipped item"
    table = Table(title=f"Medical knowledge (zero-shot multiple choice, {sample}); accuracy [95% interval]",
                  title_justify="left")
    for column, justify in (("benchmark", "left"), ("items", "right"), ("base", "right"), ("fine-tuned", "right"),
                            ("chance / best constant", "right"), ("McNemar p", "right"), ("verdict", "left")):
        table.add_column(column, justify=justify)
    for row in knowledge_rows(knowledge):
        style = _VERDICT_STYLE[row[-1]]
        table.add_row(*row[:-1], f"[{style}]{row[-1]}[/]")
    console.print(table)
    if knowledge.get("precision", "").startswith("bfloat16"):  # older eval.json files have no precision
        console.print("[yellow]scored in bfloat16 (--knowledge-bf16): some near-tied answers differ from float32[/]")
    lost = knowledge["lost"]
    if lost:
        console.print(f"[bold red]fine-tuning lost knowledge on: {', '.join(lost)}[/]")
    console.print("[dim]a verdict needs McNemar p < 0.05 on the questions one model got right and the other wrong; "
                  "'no detectable change' is not proof of no change (see docs/evaluation.md)[/]")
