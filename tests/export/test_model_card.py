"""The model card: eval and safety tables base vs tuned when `lorakit eval` ran, never the data or a path to it."""

from __future__ import annotations

from dataclasses import replace

from export.export_runs import tiny_run

from lorakit.evaluation.card_section import card_evaluation
from lorakit.run.model_card import model_card
from lorakit.run.source import read_finished_run

SUMMARY = {"probes": 2, "passed": 1, "pass_rate": 0.5, "model_deferred": 0, "deferral_rate": 0.0, "rule_failures": {}}
EVAL = {
    "quality": {"test_examples": 2, "answered": 2,
                "base": {"loss": 11.5, "perplexity": 98715.8, "rouge_l": 0.01, "token_f1": 0.02},
                "tuned": {"loss": 11.2, "perplexity": 73130.4, "rouge_l": 0.05, "token_f1": 0.04}},
    "safety": {"probes": 4, "categories": [
        {"category": "emergency", "base": SUMMARY, "tuned": {**SUMMARY, "pass_rate": 1.0}, "worse": False,
         "worse_reasons": []},
        {"category": "dosing", "base": {**SUMMARY, "pass_rate": 1.0}, "tuned": SUMMARY, "worse": True,
         "worse_reasons": ["pass rate 100% -> 50%"]}]},
}


def _paired_eval() -> dict:
    """EVAL with a safety section scored today: emergency-001 and dosing-001 with their twins."""
    from evaluation.adversarial_answers import GOOD
    from lorakit.evaluation.safety import load_probes
    from lorakit.evaluation.safety_section import compare_section

    good = dict(GOOD)
    probes = [p for p in load_probes() if p.id.split("-twin")[0] in ("emergency-001", "dosing-001")]
    base = {p.id: good[p.id] for p in probes}
    tuned = {**base, "emergency-001": "Lie down and rest; it will probably pass.", "dosing-001-twin": "Ask your GP."}
    section, _ = compare_section(probes, {"base": base, "tuned": tuned}, "", "")
    return {**EVAL, "safety": section}


def test_card_carries_eval_and_safety_tables(tiny_llama_dir, tmp_path_factory, tmp_path):
    run = read_finished_run(tiny_run(tiny_llama_dir, tmp_path_factory.mktemp("train-llama"), tmp_path / "run"))
    evaluated = replace(run, eval_results=_paired_eval())
    card = model_card(evaluated, "merged", evaluation=card_evaluation(evaluated))
    assert "| test loss | 11.5000 | 11.2000 |" in card
    assert "| ROUGE-L | 0.0100 | 0.0500 |" in card
    assert ("| Emergencies | 1 | 100% -> 0% | 100% -> 100% | 1 (100%) | 0 (0%) | yes: pair score fell from 100% to 0%; "
            "safe rate fell from 100% to 0% |") in card
    assert ("| Personal dosing | 1 | 100% -> 100% | 100% -> 0% | 1 (100%) | 0 (0%) | yes: pair score fell from 100% to "
            "0%; helpful rate (lost helpfulness) fell from 100% to 0% |") in card
    assert "Controls (constant replies scored the same way): the highest" in card and "WARNING" not in card
    assert "library_name: transformers" in card and "No `lorakit eval` results" not in card
    # Only the hash and sizes of the data: not its text, not where it lives.
    assert "Persistently high blood pressure" not in card and "qa.jsonl" not in card
    assert f"`{run.manifest['data']['sha256']}`" in card and "train 8, validation 2, test 2" in card


def test_card_flags_safety_numbers_of_the_older_scoring(tiny_llama_dir, tmp_path_factory, tmp_path):
    """eval.json written before pairs and rubrics: its pass rates are not published, the card says to re-run."""
    run = read_finished_run(tiny_run(tiny_llama_dir, tmp_path_factory.mktemp("train-llama"), tmp_path / "run"))
    evaluated = replace(run, eval_results=EVAL)
    card = model_card(evaluated, "adapter", evaluation=card_evaluation(evaluated))
    assert "used an older lorakit scoring" in card and "run `lorakit eval RUN_DIR --safety` again" in card
    assert "| Emergencies |" not in card and "| test loss | 11.5000 | 11.2000 |" in card


def test_card_carries_the_knowledge_table_with_intervals(tiny_llama_dir, tmp_path_factory, tmp_path):
    run = read_finished_run(tiny_run(tiny_llama_dir, tmp_path_factory.mktemp("train-llama"), tmp_path / "run"))
    benchmark = {"label": "PubMedQA PQA-L", "items": 1000, "verdict": "lost",
                 "base": {"accuracy": 0.552, "ci95": [0.521, 0.583]}, "tuned": {"accuracy": 0.338, "ci95": [0.309, 0.368]},
                 "controls": {"chance": 1 / 3, "best_constant": 0.552}, "mcnemar": {"p_value": 0.0}}
    evaluated = replace(run, eval_results={"knowledge": {"limit_per_benchmark": None, "benchmarks": [benchmark]}})
    card = model_card(evaluated, "adapter", evaluation=card_evaluation(evaluated))
    assert "Medical knowledge (zero-shot multiple choice by option likelihood, every shipped item;" in card
    assert "| PubMedQA PQA-L | 1000 | 55.2% [52.1%, 58.3%] | 33.8% [30.9%, 36.8%] | 33.3% / 55.2% | 0.000 | lost |" in card
