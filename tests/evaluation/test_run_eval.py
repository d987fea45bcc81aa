"""`evaluate_run` on a tiny trained model: both models side by side, files written, numbers consistent."""

import json

import pytest
import yaml

from evaluation.eval_runs import TINY_REQUEST, copy_run, evaluated_tiny_run, trained_tiny_run
from lorakit.data.records import Message
from lorakit.errors import CheckpointError
from lorakit.evaluation.quality import score_answer
from lorakit.evaluation.run_eval import EvalRequest, _merged, evaluate_run
from lorakit.evaluation.safety import CATEGORIES
from lorakit.inference.generate import GenerationSettings, generate_answer, load_run


@pytest.fixture
def evaluated(tiny_llama_dir, tmp_path_factory):
    return evaluated_tiny_run(tiny_llama_dir, tmp_path_factory.getbasetemp() / "eval-workspace")


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_eval_json_has_both_models_for_quality_and_safety(evaluated):
    result = json.loads((evaluated / "eval" / "eval.json").read_text())
    manifest = json.loads((evaluated / "manifest.json").read_text())
    quality = result["quality"]
    assert (quality["test_examples"], quality["answered"]) == (2, 1)
    assert quality["generation"]["greedy"] and quality["generation"]["max_new_tokens"] == TINY_REQUEST["max_new_tokens"]
    # The fine-tuned test loss is the one training measured on the same split; the base model's differs.
    assert quality["tuned"]["loss"] == pytest.approx(manifest["metrics"]["test_loss"], rel=1e-5)
    assert quality["base"]["loss"] != pytest.approx(quality["tuned"]["loss"])
    for which in ("base", "tuned"):
        assert set(quality[which]) == {"loss", "perplexity", "rouge_l", "token_f1"}
    safety = result["safety"]
    assert safety["probes"] == len(CATEGORIES)
    assert [c["category"] for c in safety["categories"]] == list(CATEGORIES)
    assert result["data"]["test"]["examples"] == 2 and result["data"]["train"]["examples"] == 8


def test_per_example_files_hold_both_answers_with_their_scores(evaluated):
    (row,) = _jsonl(evaluated / "eval" / "answers.jsonl")
    assert row["question"] and row["reference"] and row["source"].endswith("qa.jsonl")
    for which in ("base", "tuned"):
        scores = score_answer(row[which]["answer"], row["reference"])
        assert (row[which]["rouge_l"], row[which]["token_f1"]) == (scores.rouge_l, scores.token_f1)
    probes = _jsonl(evaluated / "eval" / "safety_answers.jsonl")
    assert [(p["category"], p["kind"]) for p in probes] == [(c, k) for c in CATEGORIES for k in ("risky", "benign")]
    assert all(isinstance(p[w]["passed"], bool) and "answer" in p[w] for p in probes for w in ("base", "tuned"))


def test_base_answers_are_what_the_base_model_alone_says(evaluated):
    """The adapter is disabled for the base model's answers: identical to loading the base model by itself."""
    (row,) = _jsonl(evaluated / "eval" / "answers.jsonl")
    settings = GenerationSettings(max_new_tokens=TINY_REQUEST["max_new_tokens"], temperature=0.0)
    question = (Message("user", row["question"]),)
    assert generate_answer(load_run(evaluated, base_only=True), question, settings)[0] == row["base"]["answer"]
    assert generate_answer(load_run(evaluated), question, settings)[0] == row["tuned"]["answer"]


def test_sections_of_the_same_adapter_are_merged_and_others_dropped(tmp_path):
    path = tmp_path / "eval.json"
    path.write_text(json.dumps({"adapter_sha256": "a", "quality": {"q": 1}, "safety": {"s": 1}}))
    assert _merged(path, "a", {"adapter_sha256": "a", "safety": {"s": 2}}) == {
        "adapter_sha256": "a", "quality": {"q": 1}, "safety": {"s": 2}}
    assert _merged(path, "b", {"adapter_sha256": "b", "safety": {"s": 2}}) == {"adapter_sha256": "b", "safety": {"s": 2}}


def test_changed_training_data_is_refused(tiny_llama_dir, tmp_path_factory, tmp_path):
    run = copy_run(trained_tiny_run(tiny_llama_dir, tmp_path_factory.getbasetemp() / "eval-workspace"), tmp_path / "run")
    config_path = run / "final" / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    changed = tmp_path / "changed.jsonl"
    changed.write_text(open(config["data"]["train_file"]).read() + '{"instruction": "New?", "response": "Yes."}\n')
    config["data"]["train_file"] = str(changed)
    config_path.write_text(yaml.safe_dump(config))
    with pytest.raises(CheckpointError, match="changed since this run was trained"):
        evaluate_run(run, EvalRequest(quality=True, limit=1, max_new_tokens=1))
