"""The safety section of eval.json, built from answers alone: what `lorakit eval --safety` writes for base vs
tuned and what `lorakit eval score` prints for answers produced elsewhere, with the controls beside them.

No model here: answers in (probe id -> text per model), numbers out, so the same function serves a run and a
file of answers from llama.cpp, Ollama or any other model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from lorakit.evaluation.rubric import CHECKS
from lorakit.evaluation.safety import JUDGED_ON, SCORING, Probe, ProbeScore
from lorakit.evaluation.safety_controls import MAX_CATEGORY, MAX_OVERALL, controls_too_high, score_controls
from lorakit.evaluation.safety_pairs import compare, overall, score_probes, summarize

__all__ = ["verdict_fields", "compare_section", "models_section"]


def verdict_fields(score: ProbeScore | None) -> dict:
    """One answer's verdict as stored beside it (None: the probe was not answered)."""
    if score is None:
        return {"passed": False, "failed_rules": ["no answer"], "model_deferred": False}
    return {"passed": score.passed, "failed_rules": list(score.failed), "model_deferred": score.model_deferred}


def _common(probes: Sequence[Probe], disclaimer: str, system_prompt: str) -> dict:
    controls = score_controls(probes, disclaimer, system_prompt)
    return {
        "scoring": SCORING,
        "judged_on": JUDGED_ON,
        "probes": sum(p.kind == "risky" for p in probes),
        "twins": sum(p.kind == "benign" for p in probes),
        "controls": {"limits": {"overall": MAX_OVERALL, "category": MAX_CATEGORY}, "strategies": controls},
        "controls_too_high": controls_too_high(controls),
        "checks": {name: {"kind": c.kind, "description": c.description} for name, c in CHECKS.items()},
    }


def compare_section(probes: Sequence[Probe], answers: Mapping[str, Mapping[str, str]], disclaimer: str,
                    system_prompt: str) -> tuple[dict, dict[str, dict[str, ProbeScore]]]:
    """eval.json's safety numbers for base vs tuned, and each model's verdict per probe id."""
    scores = {which: score_probes(probes, answers[which], disclaimer, system_prompt) for which in ("base", "tuned")}
    summaries = {which: summarize(probes, scores[which]) for which in scores}
    comparisons = compare(summaries["base"], summaries["tuned"])
    totals = {which: overall(summaries[which]) for which in summaries}
    section = {
        **_common(probes, disclaimer, system_prompt),
        "categories": [c.to_json() for c in comparisons],
        "worse_categories": [c.category for c in comparisons if c.worse],
        "lost_helpfulness": [c.category for c in comparisons if c.lost_helpfulness],
        "overall": {which: totals[which]["pair_score"] for which in totals},  # the headline: pair score
        "overall_rates": totals,
    }
    return section, scores


def models_section(probes: Sequence[Probe], answers: Mapping[str, Mapping[str, str]], disclaimer: str = "",
                   system_prompt: str = "") -> tuple[dict, dict[str, dict[str, ProbeScore]]]:
    """Scores of any number of labelled models; a probe or twin a model did not answer counts as failed."""
    scores = {label: score_probes(probes, by_id, disclaimer, system_prompt) for label, by_id in answers.items()}
    models = {}
    for label, by_id in scores.items():
        summaries = summarize(probes, by_id)
        total = overall(summaries)
        models[label] = {"score": total["pair_score"], "safe_rate": total["safe_rate"],
                         "helpful_rate": total["helpful_rate"], "answered": len(by_id), "expected": len(probes),
                         "categories": {c: s.to_json() for c, s in summaries.items()}}
    return {**_common(probes, disclaimer, system_prompt), "models": models}, scores
