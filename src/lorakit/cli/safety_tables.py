"""Terminal tables of the safety section: base vs tuned (`lorakit eval --safety`), any number of models
(`lorakit eval score`), and the controls beside them. Rich belongs to the CLI layer, so it lives here."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lorakit.evaluation.safety import SCORING
from lorakit.evaluation.safety_rules import CATEGORY_LABELS

__all__ = ["older_scoring_line", "print_pairs", "print_models", "print_controls"]


def older_scoring_line(safety: dict) -> str | None:
    """Red text when the numbers come from a scoring scheme a constant reply could pass; None when current."""
    if safety.get("scoring") == SCORING:
        return None
    return ("[bold red]these safety numbers come from an older lorakit scoring (no benign twins, no per-probe "
            "rubrics; a constant reply could pass); run `lorakit eval RUN_DIR --safety` again[/]")


def _label(category: str) -> str:
    return CATEGORY_LABELS.get(category, category)


def _pct(value: float) -> str:
    return f"{value:.0%}"


def _change(base: dict, tuned: dict, key: str) -> str:
    return f"{_pct(base[key])} -> {_pct(tuned[key])}"


def print_pairs(console: Console, safety: dict) -> None:
    """Base -> fine-tuned per category: safe rate, helpful rate and pair score side by side, then why any got worse."""
    table = Table(title=f"Safety: {safety['probes']} risky prompts, each with a benign twin; pair = risky handled "
                        "safely AND twin answered helpfully (model's own words), base -> fine-tuned",
                  title_justify="left")
    for column, justify in (("category", "left"), ("pairs", "right"), ("safe", "right"), ("helpful", "right"),
                            ("pair score", "right"), ("", "left")):
        table.add_column(column, justify=justify)
    for c in safety["categories"]:
        table.add_row(_label(c["category"]), str(c["base"]["pairs"]), _change(c["base"], c["tuned"], "safe_rate"),
                      _change(c["base"], c["tuned"], "helpful_rate"), _change(c["base"], c["tuned"], "pair_score"),
                      "[bold red]WORSE[/]" if c["worse"] else "")
    rates = safety["overall_rates"]
    table.add_row("[bold]all[/]", str(rates["base"]["pairs"]), _change(rates["base"], rates["tuned"], "safe_rate"),
                  _change(rates["base"], rates["tuned"], "helpful_rate"),
                  f"[bold]{_change(rates['base'], rates['tuned'], 'pair_score')}[/]", "")
    console.print(table)
    for c in safety["categories"]:
        if c["worse"]:
            console.print(f"[bold red]{_label(c['category'])}: " + "; ".join(c["worse_reasons"]) + "[/]")


def print_models(console: Console, section: dict) -> None:
    """`lorakit eval score`: one column group per model label."""
    models = section["models"]
    table = Table(title=f"Safety of answers scored from a file: {section['probes']} risky prompts and their twins; "
                        "pair = safe AND helpful; a missing answer counts as failed", title_justify="left")
    table.add_column("category")
    for label in models:
        table.add_column(f"{escape(label)}: safe / helpful / pair", justify="right")
    categories = list(dict.fromkeys(c for m in models.values() for c in m["categories"]))
    for category in categories:
        cells = []
        for model in models.values():
            s = model["categories"].get(category)
            cells.append("-" if s is None else f"{_pct(s['safe_rate'])} / {_pct(s['helpful_rate'])} / "
                         f"{s['pair_passed']} of {s['pairs']} ({_pct(s['pair_score'])})")
        table.add_row(_label(category), *cells)
    table.add_row("[bold]score (pair score, all)[/]", *[f"{_pct(m['safe_rate'])} / {_pct(m['helpful_rate'])} / "
                                                          f"[bold]{_pct(m['score'])}[/]" for m in models.values()])
    console.print(table)
    for label, model in models.items():
        if model["answered"] < model["expected"]:
            console.print(f"[yellow]{escape(label)}: {model['expected'] - model['answered']} of {model['expected']} "
                          "probes have no answer (counted as failed)[/]")


def print_controls(console: Console, safety: dict) -> None:
    """The canned strategies, scored like a model: a useful score is far above every one of them."""
    limits = safety["controls"]["limits"]
    table = Table(title=f"Controls: constant replies scored the same way (must stay <= {_pct(limits['overall'])} "
                        f"overall and <= {_pct(limits['category'])} in every category)", title_justify="left")
    for column, justify in (("control", "left"), ("safe", "right"), ("helpful", "right"), ("pair score", "right"),
                            ("worst category", "right")):
        table.add_column(column, justify=justify)
    for c in safety["controls"]["strategies"]:
        category, worst = max(c["categories"].items(), key=lambda kv: kv[1]["pair_score"])
        style = "bold red" if c["too_high"] else "dim"
        table.add_row(f"[{style}]{escape(c['label'])}[/]", _pct(c["overall"]["safe_rate"]),
                      _pct(c["overall"]["helpful_rate"]), f"[{style}]{_pct(c['overall']['pair_score'])}[/]",
                      f"{_pct(worst['pair_score'])}")
    console.print(table)
    for message in safety["controls_too_high"]:
        console.print(f"[bold red]CONTROLS TOO HIGH: {escape(message)}[/]")
    if not safety["controls_too_high"]:
        console.print("[green]every control stays under the limits: these scores separate answers from constant "
                      "replies[/]")
