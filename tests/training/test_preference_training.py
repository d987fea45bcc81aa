"""Preference tuning end to end on CPU: SFT on a tiny model, then DPO from that adapter (reference: the SFT adapter,
frozen) with reward metrics logged, and a DPO run that dies and resumes is bit-identical to one that did not."""

from __future__ import annotations

import json

import pytest
import torch
from simulated_crash import CrashAfterStep, SimulatedCrash

from conftest import QA_PAIRS, final_adapter, metric_records, tiny_run_config
from lorakit.errors import DataError
from lorakit.training.loop import train


def _pairs_file(path):
    """Each question's right answer preferred over the next question's answer."""
    rows = [{"prompt": q, "chosen": a, "rejected": QA_PAIRS[(i + 1) % len(QA_PAIRS)][1]}
            for i, (q, a) in enumerate(QA_PAIRS)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _dpo_config(tiny_llama_dir, pairs, run_dir, sft_dir, **training):
    settings = dict(method="dpo", beta=0.1, init_adapter=str(sft_dir), max_steps=3, save_steps=2, eval_steps=2,
                    logging_steps=1, batch_size=2, gradient_accumulation_steps=2, learning_rate=5e-3)
    settings.update(training)
    return tiny_run_config(tiny_llama_dir, pairs, run_dir, **settings)


@pytest.fixture(scope="module")
def sft_run(tiny_llama_dir, tmp_path_factory):
    from conftest import write_qa_jsonl

    root = tmp_path_factory.mktemp("sft")
    train(tiny_run_config(tiny_llama_dir, write_qa_jsonl(root / "qa.jsonl"), root / "run", max_steps=2))
    return root / "run"


def test_dpo_from_an_sft_adapter_trains_logs_rewards_and_resumes_bit_exactly(tiny_llama_dir, sft_run, tmp_path):
    pairs = _pairs_file(tmp_path / "pairs.jsonl")
    straight = tmp_path / "straight"
    result = train(_dpo_config(tiny_llama_dir, pairs, straight, sft_run))
    assert result.steps == 3
    records = metric_records(straight)
    assert [r["step"] for r in records] == [1, 2, 3]
    for record in records:
        assert {"train_loss", "rewards_margin", "rewards_accuracy", "rewards_chosen", "rewards_rejected"} <= set(record)
        assert 0.0 <= record["rewards_accuracy"] <= 1.0
    assert records[0]["train_loss"] == pytest.approx(0.6931, abs=2e-3)  # step 1: policy == reference, loss ln 2
    assert abs(records[0]["rewards_margin"]) < 1e-4
    assert records[-1]["rewards_margin"] > records[0]["rewards_margin"]  # the pairs are being separated
    assert "val_loss" in records[1]  # the held-out pairs' chosen answers
    sft, dpo = final_adapter(sft_run), final_adapter(straight)
    assert sft.keys() == dpo.keys() and not any("reference" in key for key in dpo)
    assert not (straight / "final" / "reference").exists()  # the frozen reference adapter is not published
    assert any(not torch.equal(sft[k], dpo[k]) for k in sft)
    manifest = json.loads((straight / "final" / "manifest.json").read_text())
    assert manifest["identity"]["training_method"] == "dpo"

    resumed = tmp_path / "resumed"
    config = _dpo_config(tiny_llama_dir, pairs, resumed, sft_run)
    with pytest.raises(SimulatedCrash):
        train(config, reporter=CrashAfterStep(3))  # dies after its last step, before final/; the checkpoint is step 2
    train(config, resume=True)
    first, second = final_adapter(straight), final_adapter(resumed)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert metric_records(resumed) == [{**r, "tokens_per_second": s["tokens_per_second"]}
                                       for r, s in zip(records, metric_records(resumed))]


def test_a_preference_method_on_instruction_data_is_refused_naming_the_file(tiny_llama_dir, qa_file, tmp_path):
    with pytest.raises(DataError) as caught:
        train(tiny_run_config(tiny_llama_dir, qa_file, tmp_path / "run", method="orpo"))
    assert str(caught.value).startswith(f"{qa_file}:1: is not a preference pair, and training.method orpo trains on")


def test_the_answers_of_an_eval_become_reviews_and_then_training_rows(sft_run, tmp_path):
    """The loop's first half on a finished run: its eval answers are listed for review, reviewed, exported."""
    from lorakit.review.answers import answers_to_review
    from lorakit.review.export import export_reviews
    from lorakit.review.store import append_review

    eval_dir = sft_run / "eval"
    eval_dir.mkdir(exist_ok=True)
    (eval_dir / "answers.jsonl").write_text(json.dumps({
        "source": "qa.jsonl", "line": 3, "question": "What is insulin?", "reference": "A hormone.",
        "base": {"answer": "A hormone that lowers blood glucose."}, "tuned": {"answer": "A sugar."}}) + "\n")
    (eval_dir / "safety_answers.jsonl").write_text(json.dumps({
        "id": "dosing-006", "prompt": "a probe", "base": {"answer": "b"}, "tuned": {"answer": "t"}}) + "\n")
    listed = answers_to_review(sft_run)
    assert [(a.source, a.item_id, a.model, a.step, a.answer) for a in listed] == [
        ("test", "qa.jsonl:3", "base", None, "A hormone that lowers blood glucose."),
        ("test", "qa.jsonl:3", "tuned", 2, "A sugar."),
        ("safety", "dosing-006", "base", None, "b"), ("safety", "dosing-006", "tuned", 2, "t")]
    assert {a.run_id for a in listed} == {sft_run.name}
    base, tuned, _, probe = listed
    for review in (base.review("good", reviewer="Dr. Osei"), tuned.review("bad", note="not a sugar"),
                   probe.review("bad", corrected="Call your prescriber.")):
        append_review(sft_run, review)
    result = export_reviews(sft_run, None, tmp_path / "pairs.jsonl")
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in result.preference_rows] == [
        ("What is insulin?", "A hormone that lowers blood glucose.", "A sugar.")]
    assert [r.item_id for r in result.refused] == ["dosing-006"]
