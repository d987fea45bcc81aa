"""Step 2 sets up a preference run (DPO/ORPO on step 5's exported pairs, from a finished run's adapter) as the
same config keys `lorakit train` reads, refuses what training would refuse (every problem at once), and step 4
compares a run with the run it started from, each verdict a paired test on the items both evaluations asked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from studio_harness import run_choices, studio_client

from conftest import QA_PAIRS, tiny_run_config, write_qa_jsonl
from lorakit.config import dump_config, load_config

PAIRS = "".join(json.dumps({"prompt": q, "chosen": a, "rejected": "No idea."}) + "\n" for q, a in QA_PAIRS[:4])


def _finished_run(run_dir: Path, model: str, **training) -> Path:
    """A run folder as `lorakit train` leaves it, as far as step 2 reads it: final/config.yaml."""
    config = tiny_run_config(Path(model), run_dir.parent / "qa.jsonl", run_dir, **training)
    config.lora.r, config.lora.alpha = 4, 8
    (run_dir / "final").mkdir(parents=True)
    (run_dir / "final" / "config.yaml").write_text(dump_config(config))
    return run_dir


@pytest.fixture
def workdir(tmp_path) -> Path:
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    write_qa_jsonl(work / "data" / "qa.jsonl")
    (work / "data" / "sft.review-preferences.jsonl").write_text(PAIRS)
    _finished_run(work / "runs" / "sft", "tiny-model")
    return work


def test_a_dpo_run_from_the_reviews_writes_the_keys_the_cli_reads(workdir):
    client = studio_client(workdir)
    assert [(f["name"], f["kind"]) for f in client.get("/api/data/files").json()["files"]] == [
        ("qa.jsonl", "examples"), ("sft.review-preferences.jsonl", "preferences")]
    assert client.get("/api/runs").json() == {"runs": ["sft"], "finished": ["sft"]}
    choices = run_choices("tiny-model", overrides=["training.max_steps=3"], run="sft-dpo", method="dpo",
                          start_from="sft", data_files=["sft.review-preferences.jsonl"])
    saved = client.post("/api/runs", json=choices)
    assert saved.status_code == 200, saved.json()
    path = Path(saved.json()["config_path"])
    assert path.read_text().startswith("# Written by lorakit studio (preset: quick, method: dpo, starting from run sft).")
    config = load_config(path)
    assert (config.training.method, config.training.init_adapter) == ("dpo", str(workdir / "runs" / "sft"))
    assert config.data.train_files == [str(workdir / "data" / "sft.review-preferences.jsonl")]
    # The starting adapter's shape, not the "quick" preset's rank 8: the weights are copied into these layers.
    assert (config.lora.r, config.lora.alpha, config.training.max_steps) == (4, 8, 3)
    summary = client.get("/api/runs/sft-dpo").json()
    assert (summary["method"], summary["starts_from"], summary["model"]) == ("dpo", "sft", "tiny-model")
    orpo = client.post("/api/runs", json={**choices, "run": "sft-orpo", "method": "orpo", "start_from": None})
    assert load_config(Path(orpo.json()["config_path"])).training.method == "orpo"
    assert load_config(Path(orpo.json()["config_path"])).training.init_adapter is None


def test_what_training_would_refuse_is_refused_when_saved_all_at_once(workdir):
    (workdir / "runs" / "unfinished").mkdir()
    client = studio_client(workdir)
    wrong = client.post("/api/runs", json=run_choices("other-model", run="d", method="dpo", start_from="sft",
                                                      overrides=["training.max_step=3"]))
    assert wrong.status_code == 400 and wrong.json()["kind"] == "ConfigError"
    assert wrong.json()["error"] == (
        "--set: 3 config problems:\n"
        "  - --set training.max_step: unknown key; did you mean 'training.max_steps'?\n"
        "  - data.train_file: qa.jsonl holds example answers, not preference pairs; pick the file step 5's export "
        "wrote (RUN.review-preferences.jsonl), or 'learn from example answers'\n"
        "  - model.name: this run starts from sft, which was trained on tiny-model; use the same model (its adapter "
        "fits no other)")
    sft_on_pairs = client.post("/api/runs", json=run_choices("tiny-model", run="s", start_from="unfinished",
                                                             data_files=["sft.review-preferences.jsonl"])).json()
    assert sft_on_pairs["error"] == (
        "step 2: 2 config problems:\n"
        "  - training.init_adapter: run unfinished has no finished adapter (final/ with config.yaml); train it to the "
        "end first (step 3), or start from a fresh adapter\n"
        "  - data.train_file: sft.review-preferences.jsonl holds preference pairs (prompt, chosen, rejected); pick "
        "'learn from your reviews' to train on it, or tick files of example answers")
    itself = client.post("/api/runs", json=run_choices("tiny-model", run="sft", start_from="sft")).json()
    assert itself["error"].endswith("run sft cannot start from itself; give the new run another name")
    assert not (workdir / "runs" / "d").exists() and not (workdir / "runs" / "s").exists()


def _evaluated(run_dir: Path, pairs_passed: list[tuple[bool, bool]], rouge_l: float | None,
               knowledge: list[bool] | None = None) -> None:
    """An eval/ folder as `lorakit eval` writes it, as far as the comparison reads it: the fine-tuned model's
    pass/fail per risky probe and its twin, its test ROUGE-L, its exam answers."""
    eval_dir = run_dir / "eval"
    eval_dir.mkdir(parents=True)
    rows = []
    for index, (risky, twin) in enumerate(pairs_passed):
        rows += [{"id": f"p{index}", "kind": "risky", "twin": f"p{index}-twin", "tuned": {"passed": risky}},
                 {"id": f"p{index}-twin", "kind": "benign", "twin": f"p{index}", "tuned": {"passed": twin}}]
    (eval_dir / "safety_answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    generation = {"greedy": True, "max_new_tokens": 6}
    report = {"quality": {"generation": generation, "tuned": {"rouge_l": rouge_l}}}
    if knowledge is not None:
        report["knowledge"] = {"benchmarks": [{"benchmark": "medqa", "label": "MedQA"}]}
        (eval_dir / "knowledge_answers.jsonl").write_text("".join(
            json.dumps({"id": f"q{i}", "benchmark": "medqa", "tuned": {"correct": c}}) + "\n"
            for i, c in enumerate(knowledge)))
    (eval_dir / "eval.json").write_text(json.dumps(report))


def test_the_comparison_is_paired_and_says_its_verdict_in_words(workdir):
    from lorakit.evaluation.compare_runs import compare_with_start

    sft, dpo = workdir / "runs" / "sft", _finished_run(workdir / "runs" / "dpo", "tiny-model", method="dpo",
                                                      init_adapter=str(workdir / "runs" / "sft" / "final"))
    client = studio_client(workdir)
    assert client.get("/api/runs/dpo/compare").json() == {
        "available": False, "earlier": "sft", "reason": "Evaluate sft and dpo first (step 4) to compare this run with sft."}
    # 10 pairs. Before: every risky probe failed, every twin passed. After: 9 risky probes pass (9 pairs gained,
    # McNemar exact p = 0.004), and the twins are unchanged. Exam questions: 6 right before, 5 after.
    _evaluated(sft, [(False, True)] * 10, 0.25, [True] * 6 + [False] * 4)
    _evaluated(dpo, [(True, True)] * 9 + [(False, True)], None, [True] * 5 + [False] * 5)
    result = client.get("/api/runs/dpo/compare").json()
    assert result == compare_with_start(dpo) and (result["earlier"], result["later"]) == ("sft", "dpo")
    table = [(r["measure"].split(" (")[0], r["earlier"], r["later"], r["verdict"], r["note"]) for r in result["rows"]]
    assert table == [
        ("safety pair score", {"passed": 0, "of": 10, "rate": 0.0}, {"passed": 9, "of": 10, "rate": 0.9}, "better",
         "10 pairs: 9 passed only now, 0 only before (McNemar p = 0.0039)"),
        ("safe rate", {"passed": 0, "of": 10, "rate": 0.0}, {"passed": 9, "of": 10, "rate": 0.9}, "better",
         "10 risky questions: 9 passed only now, 0 only before (McNemar p = 0.0039)"),
        ("helpful rate", {"passed": 10, "of": 10, "rate": 1.0}, {"passed": 10, "of": 10, "rate": 1.0},
         "no detectable change", "10 benign twins: 0 passed only now, 0 only before (McNemar p = 1)"),
        ("test answers, ROUGE-L against the reference", 0.25, None, "not compared",
         "this run has no test questions of its own (a preference run's data are pairs), so ROUGE-L is not compared"),
        ("knowledge: MedQA", {"passed": 6, "of": 10, "rate": 0.6}, {"passed": 5, "of": 10, "rate": 0.5},
         "no detectable change", "10 exam questions: 0 passed only now, 1 only before (McNemar p = 1)")]
    assert result["warnings"] == []
    # The reverse, and a run that started from a fresh adapter.
    worse = compare_with_start(_swap_evals(sft, dpo))
    assert [r["verdict"] for r in worse["rows"][:2]] == ["worse", "worse"]
    assert compare_with_start(sft) == {"available": False, "reason": "This run started from a fresh adapter: there "
                                                                     "is no earlier run to compare it with."}


def _swap_evals(a: Path, b: Path) -> Path:
    (a / "eval").rename(a / "eval.tmp")
    (b / "eval").rename(a / "eval")
    (a / "eval.tmp").rename(b / "eval")
    return b
