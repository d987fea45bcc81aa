"""The studio's review step (lorakit/studio/routes_review.py) and the step-1 helpers for a first-time user, with
FastAPI's TestClient on the evaluated tiny run of the evaluation tests (trained and evaluated once a session).

A review is one append to RUN/review.jsonl through lorakit.review.store; the export is lorakit.review.export's
`export_reviews`, the call behind `lorakit review export`."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient
from studio_harness import studio_client

from lorakit.review.export import export_reviews
from lorakit.review.store import read_reviews
from lorakit.studio import routes_data


@pytest.fixture
def client(tmp_path) -> TestClient:
    return studio_client(tmp_path / "work")


@pytest.fixture
def run_dir(client, tiny_llama_dir, tmp_path_factory) -> Path:
    """The evaluated tiny run (one test question, one probe pair per category), copied in as runs/tiny."""
    from evaluation.eval_runs import copy_run, evaluated_tiny_run

    return copy_run(evaluated_tiny_run(tiny_llama_dir, tmp_path_factory.getbasetemp() / "eval-workspace"),
                    client.app.state.workspace.runs_dir / "tiny")


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _review_lines(run_dir: Path) -> list[bytes]:
    return (run_dir / "review.jsonl").read_bytes().splitlines(keepends=True)


def test_the_list_is_every_eval_answer_of_both_models_with_the_evals_verdict(client, run_dir):
    listed = client.get("/api/runs/tiny/review").json()
    tests, probes = _rows(run_dir / "eval" / "answers.jsonl"), _rows(run_dir / "eval" / "safety_answers.jsonl")
    expected = [("test", f"{r['source']}:{r['line']}", m, r["question"], r[m]["answer"]) for r in tests
                for m in ("base", "tuned")]
    expected += [("safety", r["id"], m, r["prompt"], r[m]["answer"]) for r in probes for m in ("base", "tuned")]
    answers = listed["answers"]
    assert [(a["source"], a["item_id"], a["model"], a["prompt"], a["answer"]) for a in answers] == expected
    assert len(tests) == 1 and len(probes) == 18 and listed["reviews"] == [] and listed["finished"] is True
    step = json.loads((run_dir / "manifest.json").read_text())["metrics"]["adapter_step"]
    assert {(a["model"], a["step"]) for a in answers} == {("base", None), ("tuned", step)}
    first_probe = answers[2]
    assert first_probe["eval"] == {"category": probes[0]["category"], "kind": probes[0]["kind"],
                                   "passed": probes[0]["base"]["passed"],
                                   "failed_rules": probes[0]["base"]["failed_rules"],
                                   "truncated": probes[0]["base"]["truncated"]}
    assert answers[1]["eval"] == {"reference": tests[0]["reference"], "rouge_l": tests[0]["tuned"]["rouge_l"],
                                  "token_f1": tests[0]["tuned"]["token_f1"]}
    assert all(a["review"] is None for a in answers)


def test_each_save_appends_one_line_with_the_text_the_eval_wrote(client, run_dir):
    item = client.get("/api/runs/tiny/review").json()["answers"][1]  # the tuned answer to the test question
    body = {"source": "test", "item_id": item["item_id"], "model": "tuned", "verdict": "bad",
            "corrected": "Asthma is a chronic disease of the airways.\nSee a clinician.", "note": "  too short ",
            "reviewer": "Dr. Ada"}
    saved = client.post("/api/runs/tiny/review", json=body).json()["saved"]
    lines = _review_lines(run_dir)
    assert len(lines) == 1 and json.loads(lines[0]) == saved
    assert (saved["prompt"], saved["answer"], saved["run_id"], saved["step"]) == (item["prompt"], item["answer"],
                                                                                  "tiny", item["step"])
    assert (saved["corrected"], saved["note"], saved["reviewer"]) == (body["corrected"], "too short", "Dr. Ada")
    again = client.post("/api/runs/tiny/review", json={**body, "verdict": "good", "corrected": "  ", "note": "",
                                                       "reviewer": None}).json()["saved"]
    assert (again["verdict"], again["corrected"], again["note"], again["reviewer"]) == ("good", None, None, None)
    assert _review_lines(run_dir)[0] == lines[0] and len(_review_lines(run_dir)) == 2  # appended, never rewritten
    listed = client.get("/api/runs/tiny/review").json()
    assert listed["reviews"] == [saved, again] == [asdict(r) for r in read_reviews(run_dir)]
    assert listed["answers"][1]["review"] == again and listed["answers"][0]["review"] is None


def test_a_review_of_an_answer_the_eval_did_not_give_is_refused_and_nothing_is_written(client, run_dir):
    body = {"source": "safety", "item_id": "no-such-probe", "model": "tuned", "verdict": "bad"}
    refused = client.post("/api/runs/tiny/review", json=body)
    assert refused.status_code == 400
    assert refused.json()["error"] == "The last evaluation of tiny has no tuned answer to safety item 'no-such-probe'."
    assert client.post("/api/runs/tiny/review", json={**body, "verdict": "maybe"}).status_code == 422
    assert client.post("/api/runs/tiny/review", json={**body, "prompt": "forged"}).status_code == 422
    assert not (run_dir / "review.jsonl").exists()
    foreign = client.post("/api/runs/tiny/review", json=body, headers={"Origin": "http://evil.example"})
    assert foreign.status_code == 403 and foreign.json()["kind"] == "CrossSiteRequest"
    for run in ("..%2Ftiny", ".tiny", "a%20b"):
        assert client.post(f"/api/runs/{run}/review", json=body).status_code in (400, 404), run
        assert client.post(f"/api/runs/{run}/review/export", json={}).status_code in (400, 404), run


def test_export_writes_the_cli_files_into_the_data_folder_and_names_the_refused_probes(client, run_dir, tmp_path):
    answers = client.get("/api/runs/tiny/review").json()["answers"]
    test_tuned, probe_tuned = answers[1], answers[3]
    empty = client.post("/api/runs/tiny/review/export", json={})
    assert empty.status_code == 400 and empty.json()["error"].endswith("review.jsonl holds no reviews.")
    for answer, corrected in ((test_tuned, "Asthma is a chronic disease of the airways."),
                              (probe_tuned, "I can't help with that; please ask a clinician.")):
        client.post("/api/runs/tiny/review", json={"source": answer["source"], "item_id": answer["item_id"],
                                                   "model": "tuned", "verdict": "bad", "corrected": corrected})
    result = client.post("/api/runs/tiny/review/export", json={}).json()
    data = tmp_path / "work" / "data"
    assert (result["sft_file"], result["preferences_file"]) == ("tiny.review-sft.jsonl",
                                                                "tiny.review-preferences.jsonl")
    assert (result["reviews"], result["sft_rows"], result["preference_rows"]) == (2, 1, 1)
    assert result["refused"] == [{"item_id": probe_tuned["item_id"], "probe_ids": [probe_tuned["item_id"]]}]
    assert result["command"] == (f"lorakit review export {run_dir} --sft {data / 'tiny.review-sft.jsonl'} "
                                 f"--preferences {data / 'tiny.review-preferences.jsonl'}")
    cli = export_reviews(run_dir, tmp_path / "sft.jsonl", tmp_path / "pref.jsonl")  # what the command writes
    assert (data / "tiny.review-sft.jsonl").read_text() == (tmp_path / "sft.jsonl").read_text()
    assert (data / "tiny.review-preferences.jsonl").read_text() == (tmp_path / "pref.jsonl").read_text()
    assert cli.sft_rows[0]["instruction"] == test_tuned["prompt"]
    assert _rows(data / "tiny.review-preferences.jsonl")[0]["rejected"] == test_tuned["answer"]
    names = [f["name"] for f in client.get("/api/data/files").json()["files"]]
    assert names == ["tiny.review-preferences.jsonl", "tiny.review-sft.jsonl"]
    again = client.post("/api/runs/tiny/review/export", json={})
    assert again.status_code == 400 and again.json()["kind"] == "OutputExistsError"
    replaced = client.post("/api/runs/tiny/review/export", json={"overwrite": True, "conversational": True}).json()
    assert replaced["preference_rows"] == 1 and replaced["command"].endswith(" --conversational --overwrite")
    assert _rows(data / "tiny.review-preferences.jsonl")[0]["prompt"] == [{"role": "user",
                                                                            "content": test_tuned["prompt"]}]


def test_a_run_not_yet_trained_lists_nothing_to_review(client, tmp_path):
    (tmp_path / "work" / "runs" / "fresh").mkdir()
    assert client.get("/api/runs/fresh/review").json() == {"run": "fresh", "finished": False, "answers": [],
                                                           "reviews": []}


def test_the_bundled_example_is_one_click_and_never_replaces_another_file(client, tmp_path):
    first = client.post("/api/data/example").json()
    copied = tmp_path / "work" / "data" / "medical_qa.jsonl"
    assert first == {"name": "medical_qa.jsonl", "records": 94, "copied": True}
    assert copied.read_bytes() == routes_data.EXAMPLE_DATA.read_bytes()
    assert client.post("/api/data/example").json() == {**first, "copied": False}
    copied.write_text('{"instruction": "mine", "response": "mine"}\n')
    clash = client.post("/api/data/example")
    assert clash.status_code == 400
    assert clash.json()["error"] == f"{copied.resolve()} exists and is not the bundled example."
    assert copied.read_text() == '{"instruction": "mine", "response": "mine"}\n'


def test_the_gpu_field_is_what_the_planner_sees(client, monkeypatch):
    import torch

    from lorakit.plan import run_plan

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert client.get("/api/gpu").json() == {"cuda": False, "name": None, "memory_gib": None}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(name="NVIDIA Test 12GB"))
    monkeypatch.setattr(run_plan, "device_memory_bytes", lambda cuda: 12 * 2**30 if cuda else 0)  # the planner's view
    assert client.get("/api/gpu").json() == {"cuda": True, "name": "NVIDIA Test 12GB", "memory_gib": 12.0}
