"""The judge's agreement with the rules and its disagreements, in the terminal (`lorakit eval --judge`)."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

__all__ = ["judge_option", "judge_model_option", "judge_api_key_env_option", "judge_timeout_option", "judge_spec",
           "print_judge", "kappa_words"]

_SHOWN_CHARS = 160  # of a prompt or answer in the terminal; eval.json and the report hold them whole


def kappa_words(kappa: float | None) -> str:
    """Landis and Koch's usual reading of kappa, for a reader who has not met the statistic.

    >>> kappa_words(0.4), kappa_words(0.9), kappa_words(0.0), kappa_words(-0.2), kappa_words(None)
    ('fair', 'almost perfect', 'no better than chance', 'worse than chance', 'undefined')
    """
    if kappa is None:
        return "undefined"
    if kappa <= 0.0:
        return "worse than chance" if kappa < 0 else "no better than chance"
    for limit, words in ((0.2, "slight"), (0.4, "fair"), (0.6, "moderate"), (0.8, "substantial")):
        if kappa <= limit:
            return words
    return "almost perfect"


def judge_option():
    return typer.Option(None, "--judge", metavar="SOURCE", help="Also grade each safety answer with a judge model: "
                        "an OpenAI-compatible base URL (lorakit serve, Ollama, llama.cpp, vLLM), or a local model "
                        "folder / Hub id. Reports its agreement with the rules (kappa); the rules stay the score.")


def judge_model_option():
    return typer.Option(None, "--judge-model", help="The model name to ask the judge server for (default: the only "
                        "one its /models lists).")


def judge_api_key_env_option():
    return typer.Option(None, "--judge-api-key-env", metavar="VAR",
                        help="Environment variable holding the judge server's API key (never logged).")


def judge_timeout_option():
    return typer.Option(120.0, "--judge-timeout", min=1.0, help="Seconds one judge request may take (asked twice).")


def judge_spec(source: str | None, model: str | None, api_key_env: str | None, timeout_s: float):
    """The JudgeSpec the options describe, or None without --judge (options for a server need a URL)."""
    from lorakit.evaluation.judge_client import JudgeSpec

    if source is None:
        if model or api_key_env:
            raise typer.BadParameter("--judge-model and --judge-api-key-env need --judge URL.")
        return None
    spec = JudgeSpec(source, model, api_key_env, timeout_s)
    if not spec.is_url and (model or api_key_env):
        raise typer.BadParameter("--judge-model and --judge-api-key-env are for a judge server (--judge http://...); "
                                 f"{source} is loaded as a local model.")
    return spec


def _short(text: str) -> str:
    text = " ".join(text.split())
    return escape(text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS - 3] + "...")


def _verdict(passed: bool, failed: list[str]) -> str:
    return "pass" if passed else "fail: " + ", ".join(failed)


def print_judge(console: Console, judge: dict) -> None:
    """Agreement (2x2 counts, observed and chance agreement, kappa) and one row per disagreement."""
    a = judge["agreement"]
    table = Table(title=f"Judge vs rules: {escape(judge['judge'])} graded {judge['answers']} safety answers "
                        "(the rules stay the score)", title_justify="left")
    for column in ("", "judge: pass", "judge: fail"):
        table.add_column(column, justify="left" if not column else "right")
    table.add_row("rules: pass", str(a["both_pass"]), str(a["rules_pass_judge_fail"]))
    table.add_row("rules: fail", str(a["rules_fail_judge_pass"]), str(a["both_fail"]))
    console.print(table)
    kappa = a["kappa"]
    observed = "n/a" if a["observed_agreement"] is None else f"{a['observed_agreement']:.0%}"
    chance = "n/a" if a["chance_agreement"] is None else f"{a['chance_agreement']:.0%}"
    console.print(f"agreement {observed} (chance alone: {chance}); Cohen's kappa "
                  f"{'n/a' if kappa is None else f'{kappa:.2f}'} ({kappa_words(kappa)})", highlight=False)
    disagreements = judge["disagreements"]
    if not disagreements:
        console.print("[green]the judge and the rules agree on every answer[/]")
        return
    console.print(f"[bold]{len(disagreements)} disagreements for a clinician to read[/] (whole texts in eval.json "
                  "and the report):")
    for d in disagreements:
        console.print(f"[bold]{escape(d['probe_id'])}[/] ({escape(d['model'])}): rules "
                      f"{_verdict(d['rules']['passed'], d['rules']['failed_items'])}; judge "
                      f"{_verdict(d['judge']['passed'], d['judge']['failed_items'])}", highlight=False)
        for label, text in (("asked", d["prompt"]), ("answer", d["answer"]), ("judge's reason", d["judge"]["reason"])):
            console.print(f"  {label}: {_short(text) or '(empty)'}", highlight=False)
