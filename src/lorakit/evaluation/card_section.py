"""The Evaluation section of a model card (run/model_card.py): eval.json's quality table, the safety table base vs
tuned with its controls, and the knowledge benchmarks, as Markdown lines."""

from __future__ import annotations

from lorakit.evaluation.report_knowledge import knowledge_markdown
from lorakit.evaluation.safety import SCORING
from lorakit.evaluation.safety_rules import CATEGORY_LABELS
from lorakit.run.source import RunSource

__all__ = ["card_evaluation", "eval_card_lines"]


def _number(value, fmt: str = "{:.4f}") -> str:
    return "n/a" if value is None else fmt.format(value)


def _quality_table(quality: dict) -> list[str]:
    rows = ["| measure | base | fine-tuned |", "|---|---:|---:|"]
    for key, label in (("loss", "test loss"), ("perplexity", "perplexity"), ("rouge_l", "ROUGE-L"),
                       ("token_f1", "token F1")):
        rows.append(f"| {label} | {_number(quality['base'][key])} | {_number(quality['tuned'][key])} |")
    return [f"Answer quality on {quality['answered']} of {quality['test_examples']} held-out test questions "
            "(greedy decoding):", "", *rows]


def _safety_table(safety: dict) -> list[str]:
    if safety.get("scoring") != SCORING:  # numbers a constant reply could earn are not published as a result
        return ["Safety: the evaluation of this adapter used an older lorakit scoring (no benign twins, no per-probe "
                "rubrics), which a constant reply could pass, so its numbers are not shown; run `lorakit eval RUN_DIR "
                "--safety` again before sharing."]
    pct = lambda value: f"{value:.0%}"  # noqa: E731
    rows = ["| category | pairs | safe (base -> tuned) | helpful (base -> tuned) | pair score base | pair score "
            "fine-tuned | worse |", "|---|---:|---:|---:|---:|---:|---|"]
    for c in safety["categories"]:
        base, tuned = c["base"], c["tuned"]
        rows.append(f"| {CATEGORY_LABELS.get(c['category'], c['category'])} | {base['pairs']} | "
                    f"{pct(base['safe_rate'])} -> {pct(tuned['safe_rate'])} | "
                    f"{pct(base['helpful_rate'])} -> {pct(tuned['helpful_rate'])} | "
                    f"{base['pair_passed']} ({pct(base['pair_score'])}) | {tuned['pair_passed']} ({pct(tuned['pair_score'])}) | "
                    f"{'yes: ' + '; '.join(c['worse_reasons']) if c['worse'] else 'no'} |")
    controls = safety["controls"]["strategies"]
    highest = max(controls, key=lambda c: c["overall"]["pair_score"])
    return [f"Safety probes: {safety['probes']} risky prompts, each paired with a benign question on the same topic; a "
            "pair passes when the risky prompt is handled safely and the benign one answered helpfully (rules over the "
            "model's own words):", "", *rows, "",
            f"Controls (constant replies scored the same way): the highest, '{highest['label']}', scores "
            f"{pct(highest['overall']['pair_score'])} of pairs"
            + (f". WARNING: {'; '.join(safety['controls_too_high'])}." if safety["controls_too_high"] else
               " (limits: 20% overall, 50% per category).")]


def eval_card_lines(results: dict) -> list[str]:
    """The model card's Evaluation section for eval.json's `results` (run/model_card.py's `evaluation`)."""
    lines: list[str] = []
    if "quality" in results:
        lines += _quality_table(results["quality"]) + [""]
    if "safety" in results:
        lines += _safety_table(results["safety"]) + [""]
    if "knowledge" in results:
        lines += knowledge_markdown(results["knowledge"])
    return lines or ["`lorakit eval` ran, but wrote no quality or safety section."]


def card_evaluation(run: RunSource) -> list[str] | None:
    """The `evaluation` argument of run/model_card.py's `model_card` for `run`: None when it has no eval results."""
    return eval_card_lines(run.eval_results) if run.eval_results else None
