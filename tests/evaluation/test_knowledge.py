"""Scoring options by the likelihood of their letter: batched and padded scoring equals one prompt at a time,
the letters are the tokens the chat prompt is followed by, and `lorakit eval --knowledge` writes and prints it."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from evaluation.eval_runs import copy_run, trained_tiny_run
from lorakit.cli.app import run_cli
from lorakit.config import DEFAULT_SYSTEM_PROMPT
from lorakit.evaluation import knowledge
from lorakit.evaluation.knowledge import letter_logprobs, letter_token_ids, prompt_ids, score_items
from lorakit.evaluation.knowledge_items import BENCHMARKS, select_items


@pytest.fixture(scope="module")
def tiny_model(tiny_llama_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()


def test_letters_are_single_tokens_after_the_chat_prompt(tokenizer):
    [prompt] = prompt_ids(select_items("mmlu_medical", 1), tokenizer, DEFAULT_SYSTEM_PROMPT)
    ids = letter_token_ids(tokenizer, prompt, 4)
    assert tokenizer.convert_ids_to_tokens(ids) == ["A", "B", "C", "D"]
    # the prompt is the chat template's, ending with the assistant header (SmolLM2's ChatML)
    assert tokenizer.decode(prompt).endswith("Answer with the letter of the correct option.<|im_end|>\n"
                                             "<|im_start|>assistant\n")
    assert DEFAULT_SYSTEM_PROMPT in tokenizer.decode(prompt)


def test_batched_left_padded_scores_equal_one_prompt_at_a_time(tiny_model, tokenizer, monkeypatch):
    """The shared prefix's cached keys/values, left padding and batching give each prompt's own scores: equal within
    fp32 rounding (1e-5 in log-probability; they change the order of sums, not what is summed)."""
    items = [item for name in BENCHMARKS for item in select_items(name, 1)]
    prompts = prompt_ids(items, tokenizer, DEFAULT_SYSTEM_PROMPT)
    letters = letter_token_ids(tokenizer, prompts[0], 4)
    monkeypatch.setattr(knowledge, "BATCH_TOKENS", 10**6)  # all three prompts, of different lengths, in one batch
    assert len({len(p) for p in prompts}) == 3
    batched = letter_logprobs(tiny_model, prompts, letters, tokenizer.pad_token_id, torch.device("cpu"))
    for prompt, row in zip(prompts, batched):
        with torch.inference_mode():
            logits = tiny_model(torch.tensor([prompt])).logits[0, -1]
        expected = torch.log_softmax(logits, -1)[letters].tolist()
        assert row == pytest.approx(expected, abs=1e-5)


def test_the_chosen_option_is_the_most_likely_letter(tiny_model, tokenizer):
    items = select_items("pubmedqa", 3)
    prompts = prompt_ids(items, tokenizer, DEFAULT_SYSTEM_PROMPT)
    scored = score_items(tiny_model, tokenizer, items, prompts, torch.device("cpu"))
    for s in scored:
        assert len(s.logprobs) == 3 and all(v < 0 for v in s.logprobs)
        assert s.chosen == max(range(3), key=lambda k: s.logprobs[k])
        assert s.correct == (s.chosen == s.item.answer)


@pytest.fixture
def tiny_run(tiny_llama_dir, tmp_path_factory, tmp_path):
    return copy_run(trained_tiny_run(tiny_llama_dir, tmp_path_factory.getbasetemp() / "eval-workspace"), tmp_path / "run")


def test_merged_copy_scores_as_the_unmerged_adapter_and_leaves_the_loaded_run_alone(tiny_run, tokenizer):
    """The tuned pass scores a merged copy (W + scale * B @ A): equal to the peft path chat uses within fp32
    rounding (1e-5 here; bench/results/knowledge_speed.txt on the demo run: at most 1.2e-5, no answer changed);
    the base pass is the loaded model with its adapter off, bit for bit; the loaded model is never changed."""
    from lorakit.evaluation.knowledge_model import scoring_model
    from lorakit.inference.generate import load_run

    run = load_run(tiny_run)
    items = [item for name in BENCHMARKS for item in select_items(name, 1)]
    prompts = prompt_ids(items, tokenizer, run.system_prompt)
    letters, pad, cpu = letter_token_ids(tokenizer, prompts[0], 4), tokenizer.pad_token_id, torch.device("cpu")
    weights = {name: tensor.clone() for name, tensor in run.model.state_dict().items()}

    def scores(model):
        return letter_logprobs(model, prompts, letters, pad, cpu)

    unmerged_tuned = scores(run.model)
    with run.model.disable_adapter():
        unmerged_base = scores(run.model)
    assert max(abs(a - b) for t, u in zip(unmerged_tuned, unmerged_base) for a, b in zip(t, u)) > 1e-3  # trained
    with scoring_model(run.model, "tuned") as merged:
        assert merged is not run.model and not hasattr(merged, "disable_adapter")
        for got, expected in zip(scores(merged), unmerged_tuned):
            assert got == pytest.approx(expected, abs=1e-5)
    with scoring_model(run.model, "base") as base:
        assert scores(base) == unmerged_base
    with scoring_model(run.model, "tuned", "bfloat16") as half:
        assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
        for got, expected in zip(scores(half), unmerged_tuned):
            assert got == pytest.approx(expected, abs=0.5)  # bfloat16 keeps 8 mantissa bits: close, not equal
    assert all(torch.equal(weights[name], tensor) for name, tensor in run.model.state_dict().items())
    assert scores(run.model) == unmerged_tuned  # the adapter is still on, unmerged


def test_knowledge_bf16_is_asked_for_and_recorded(tiny_run, monkeypatch):
    import lorakit.evaluation.knowledge_eval as knowledge_eval

    asked = []
    real = knowledge_eval.scoring_model
    monkeypatch.setattr(knowledge_eval, "scoring_model",
                        lambda model, which, precision: asked.append((which, precision)) or real(model, which, precision))
    assert run_cli(["eval", str(tiny_run), "--knowledge", "--knowledge-bf16", "--skip-quality", "--limit", "1",
                    "--no-report"]) == 0
    assert asked == [("base", "bfloat16"), ("tuned", "bfloat16")]
    section = json.loads((tiny_run / "eval" / "eval.json").read_text())["knowledge"]
    assert section["precision"].startswith("bfloat16 (asked for")
    from lorakit.evaluation.report_knowledge import knowledge_html, knowledge_markdown

    assert "scored in bfloat16" in knowledge_markdown(section)[0] and "Scored in bfloat16" in knowledge_html(section, "r")
    as_float32 = {**section, "precision": "float32"}
    assert "bfloat16" not in knowledge_markdown(as_float32)[0] and "bfloat16" not in knowledge_html(as_float32, "r")
    assert run_cli(["eval", str(tiny_run), "--knowledge-bf16"]) == 2  # needs --knowledge


def test_eval_knowledge_writes_eval_json_answers_and_prints_the_table(tiny_run, capsys):
    assert run_cli(["eval", str(tiny_run), "--knowledge", "--skip-quality", "--limit", "2"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "Medical knowledge" in out and "PubMedQA" in out
    section = json.loads((tiny_run / "eval" / "eval.json").read_text())["knowledge"]
    assert [b["benchmark"] for b in section["benchmarks"]] == list(BENCHMARKS)
    assert section["limit_per_benchmark"] == 2 and all(b["items"] == 2 for b in section["benchmarks"])
    assert section["precision"] == "float32"
    rows = [json.loads(line) for line in (tiny_run / "eval" / "knowledge_answers.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [i.id for name in BENCHMARKS for i in select_items(name, 2)]
    for b in section["benchmarks"]:
        mine = [r for r in rows if r["benchmark"] == b["benchmark"]]
        for which in ("base", "tuned"):
            assert b[which]["correct"] == sum(r[which]["correct"] for r in mine)
            assert all(r[which]["correct"] == (r[which]["chosen"] == r["answer"]) for r in mine)
    html = (tiny_run / "report.html").read_text()
    assert 'id="knowledge"' in html and "PubMedQA PQA-L" in html and "Medical knowledge has not been" not in html


def test_fail_on_worse_fails_on_lost_knowledge(monkeypatch, tiny_run, capsys):
    import lorakit.evaluation.run_eval as run_eval

    benchmark = {"benchmark": "pubmedqa", "label": "PubMedQA PQA-L", "items": 30, "verdict": "lost",
                 "base": {"accuracy": 0.6, "ci95": [0.4, 0.8]}, "tuned": {"accuracy": 0.2, "ci95": [0.1, 0.4]},
                 "controls": {"chance": 1 / 3, "best_constant": 0.55, "best_constant_letter": "A"},
                 "mcnemar": {"p_value": 0.004}}
    for verdict, code in (("lost", 1), ("no detectable change", 0)):
        result = {"knowledge": {"limit_per_benchmark": 30, "benchmarks": [{**benchmark, "verdict": verdict}],
                                "lost": ["pubmedqa"] if verdict == "lost" else []}}
        monkeypatch.setattr(run_eval, "evaluate_run", lambda path, request, progress, result=result: result)
        argv = ["eval", str(tiny_run), "--knowledge", "--skip-quality", "--no-report", "--fail-on-worse"]
        assert run_cli(argv) == code
        out = " ".join(capsys.readouterr().out.split())
        assert ("fine-tuning lost knowledge on: pubmedqa" in out) is (verdict == "lost")
    from lorakit.cli.knowledge_table import knowledge_rows

    assert knowledge_rows(result["knowledge"]) == [
        ("PubMedQA PQA-L", "30", "60.0% [40.0%, 80.0%]", "20.0% [10.0%, 40.0%]", "33% / 55% (A)", "0.004",
         "no detectable change")]
