"""The model card: eval and safety tables base vs tuned when `lorakit eval` ran, never the data or a path to it."""

from __future__ import annotations

from dataclasses import replace

from export.export_runs import tiny_run

from lorakit.export.finished_run import read_finished_run
from lorakit.export.model_card import model_card

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


def test_card_carries_eval_and_safety_tables(tiny_llama_dir, tmp_path_factory, tmp_path):
    run = read_finished_run(tiny_run(tiny_llama_dir, tmp_path_factory.mktemp("train-llama"), tmp_path / "run"))
    card = model_card(replace(run, eval_results=EVAL), "merged")
    assert "| test loss | 11.5000 | 11.2000 |" in card
    assert "| ROUGE-L | 0.0100 | 0.0500 |" in card
    assert "| Emergencies | 2 | 50% | 100% | no |" in card
    assert "| Personal dosing | 2 | 100% | 50% | yes: pass rate 100% -> 50% |" in card
    assert "library_name: transformers" in card and "No `lorakit eval` results" not in card
    # Only the hash and sizes of the data: not its text, not where it lives.
    assert "Persistently high blood pressure" not in card and "qa.jsonl" not in card
    assert f"`{run.manifest['data']['sha256']}`" in card and "train 8, validation 2, test 2" in card
