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
        assert row == pytest.approx(expected, abs=1e-4)


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


def test_eval_knowledge_writes_eval_json_answers_and_prints_the_table(tiny_run, capsys):
    assert run_cli(["eval", str(tiny_run), "--knowledge", "--skip-quality", "--limit", "2"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "Medical knowledge" in out and "PubMedQA" in out
    section = json.loads((tiny_run / "eval" / "eval.json").read_text())["knowledge"]
    assert [b["benchmark"] for b in section["benchmarks"]] == list(BENCHMARKS)
    assert section["limit_per_benchmark"] == 2 and all(b["items"] == 2 for b in section["benchmarks"])
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
