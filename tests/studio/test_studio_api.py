"""The studio's JSON API with FastAPI's TestClient: each route gives what the CLI command it stands for gives."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from studio_harness import BROKEN_JSONL, BROKEN_PROBLEMS, run_choices, studio_client, studio_process

from conftest import TOKENIZER_DIR, write_qa_jsonl
from fake_hub import FakeHub
from lorakit.config import load_config
from lorakit.data.validate import check_files
from lorakit.errors import ConfigError
from lorakit.studio.presets import PRESETS


@pytest.fixture
def client(tmp_path) -> TestClient:
    return studio_client(tmp_path / "work")


def test_a_request_for_another_host_name_is_refused(client):
    """DNS rebinding: a page on evil.example that resolves its name to 127.0.0.1 must not reach the studio."""
    assert client.get("/api/runs", headers={"host": "evil.example"}).status_code == 400
    assert client.get("/api/runs", headers={"host": "localhost:7860"}).status_code == 200


def _upload(client, name: str, text: str) -> None:
    assert client.put(f"/api/data/files/{name}", content=text.encode()).status_code == 200


def test_upload_lists_the_file_and_never_replaces_one(client, tmp_path):
    _upload(client, "qa.jsonl", "{}\n")
    assert client.get("/api/data/files").json()["files"] == [{"name": "qa.jsonl", "bytes": 3, "kind": "examples"}]
    again = client.put("/api/data/files/qa.jsonl", content=b"other")
    assert again.status_code == 400 and again.json()["error"].endswith("data/qa.jsonl already exists.")
    assert (tmp_path / "work" / "data" / "qa.jsonl").read_text() == "{}\n"


@pytest.mark.parametrize("name", ["..%2Fescape.jsonl", ".hidden.jsonl", "notes.txt", "a%20b.jsonl"])
def test_names_that_leave_the_data_folder_or_are_not_data_are_refused(client, tmp_path, name):
    response = client.put(f"/api/data/files/{name}", content=b"{}")
    assert response.status_code in (400, 404)
    assert not any(p.name not in ("data", "runs") for p in (tmp_path / "work").iterdir())
    assert list((tmp_path / "work" / "data").iterdir()) == []


def test_check_reports_every_problem_with_file_line_and_fix_like_the_cli(client, tmp_path):
    _upload(client, "broken.jsonl", BROKEN_JSONL)
    report = client.post("/api/data/check", json={"files": ["broken.jsonl"]}).json()
    found = [(i["path"] + f":{i['line']}" + (f":{i['column']}" if i["column"] else ""), i["severity"], i["code"])
             for i in report["issues"]]
    assert found == BROKEN_PROBLEMS
    assert all(issue["hint"] for issue in report["issues"])
    assert (report["errors"], report["warnings"], report["examples"], report["exit_code"]) == (4, 1, 2, 2)
    cli = check_files([str(tmp_path / "work" / "data" / "broken.jsonl")]).to_json()
    assert [i["message"].replace(str(tmp_path / "work" / "data") + "/", "") for i in cli["issues"]] == \
        [i["message"] for i in report["issues"]]
    privacy = " ".join(i["message"] for i in report["issues"] if i["code"].startswith("phi-"))
    assert "12345678" not in privacy and "555-123-4567" not in privacy and "MRN 1*******" in privacy


def test_redact_writes_a_new_file_and_leaves_the_input_alone(client, tmp_path):
    _upload(client, "broken.jsonl", BROKEN_JSONL)
    result = client.post("/api/data/redact", json={"file": "broken.jsonl"}).json()
    data = tmp_path / "work" / "data"
    assert result["output"] == "broken.redacted.jsonl" and result["changed_records"] == 1
    assert (data / "broken.jsonl").read_text() == BROKEN_JSONL
    redacted = (data / "broken.redacted.jsonl").read_text()
    assert "12345678" not in redacted and "555-123-4567" not in redacted and "What is gout?" in redacted
    again = client.post("/api/data/redact", json={"file": "broken.jsonl"}).json()
    assert again["error"].endswith("broken.redacted.jsonl: already exists")


def test_stats_counts_tokens_and_writes_the_histogram_next_to_the_data(client, tmp_path):
    _upload(client, "qa.jsonl", write_qa_jsonl(tmp_path / "qa.jsonl").read_text())
    stats = client.post("/api/data/stats", json={"files": ["qa.jsonl"], "tokenizer": str(TOKENIZER_DIR),
                                                 "max_length": 100}).json()
    assert stats["examples"] == 12 and stats["truncated"] == 12 and stats["histogram"] == "qa.jsonl.lengths.png"
    png = client.get("/api/data/files/qa.jsonl.lengths.png")
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_saved_run_is_a_config_the_cli_loads_with_the_preset_and_overrides(client, tmp_path, tiny_llama_dir):
    _upload(client, "qa.jsonl", "{}\n")
    saved = client.post("/api/runs", json=run_choices(str(tiny_llama_dir), overrides=["training.max_steps=7"])).json()
    path = Path(saved["config_path"])
    assert path == tmp_path / "work" / "runs" / "r1" / "studio.yaml" and saved["command"] == f"lorakit train {path}"
    config = load_config(path)
    assert config.training.max_steps == 7  # the page's line wins over the preset
    assert config.lora.r == 8 and config.training.eval_steps == 10  # the rest of "quick"
    assert config.output_dir == str(path.parent) and config.data.train_files == [str(tmp_path / "work/data/qa.jsonl")]
    assert client.get("/api/runs").json() == {"runs": ["r1"], "finished": []}
    assert set(PRESETS) == {"quick", "balanced", "thorough"}


def test_a_bad_setting_is_the_same_config_error_as_the_cli(client, tiny_llama_dir):
    _upload(client, "qa.jsonl", "{}\n")
    response = client.post("/api/runs", json=run_choices(str(tiny_llama_dir), overrides=["training.max_step=7"]))
    with pytest.raises(ConfigError) as cli:
        load_config(None, ["data.train_file=x", "training.max_step=7"])
    assert response.status_code == 400 and response.json()["kind"] == "ConfigError"
    assert response.json()["error"] == cli.value.message
    unknown = client.post("/api/runs", json=run_choices(str(tiny_llama_dir), preset="fastest")).json()
    assert unknown["error"] == "preset: 1 config problem:\n  - 'fastest' is not one of quick, balanced, thorough"


def test_plan_for_a_card_size_and_without_a_gpu(client, tiny_llama_dir):
    _upload(client, "qa.jsonl", "{}\n")
    plan = client.post("/api/plan", json={**run_choices(str(tiny_llama_dir)), "gpu_memory": "8GB"}).json()
    assert plan["gpu_gib"] == 8.0 and plan["model_type"] == "llama" and plan["chosen"]["fits"] is True
    assert plan["max_length"] == 128 and plan["lora_r"] == 4 and plan["command"] == "lorakit plan CONFIG --gpu-memory 8GB"
    assert [row[0] for row in plan["breakdown"]][:1] and plan["candidates"][0] == plan["chosen"]
    no_gpu = client.post("/api/plan", json={**run_choices(str(tiny_llama_dir)), "gpu_memory": ""}).json()
    assert no_gpu["error"] == ("--gpu-memory: 1 config problem:\n  - no CUDA GPU on this machine; say which GPU to "
                               "plan for, e.g. --gpu-memory 8GB")
    bad = client.post("/api/plan", json={**run_choices(str(tiny_llama_dir)), "gpu_memory": "lots"}).json()
    assert "'lots' is not a memory size" in bad["error"]


def test_jobs_and_chat_name_a_missing_run(client):
    for method, path, body in (("post", "/api/runs/nope/train", {}), ("post", "/api/runs/nope/eval", {}),
                               ("post", "/api/runs/nope/export", {"format": "merged"}), ("get", "/api/runs/nope", None),
                               ("post", "/api/runs/nope/chat", {"messages": [{"role": "user", "content": "Hi"}]})):
        response = getattr(client, method)(path, **({"json": body} if body is not None else {}))
        assert response.status_code == 400, path
        assert response.json()["error"].startswith("No run nope in ") and "step 2" in response.json()["hint"]


def test_the_page_and_its_files_are_served_without_other_hosts(client):
    page = client.get("/")
    assert page.status_code == 200 and "<h1>lorakit studio</h1>" in page.text
    for name in ("studio.js", "studio.css"):
        assert client.get(f"/static/{name}").status_code == 200
    static = Path(__file__).resolve().parents[2] / "src/lorakit/studio/static"
    for path in static.iterdir():
        text = path.read_text()
        urls = re.findall(r"(?:https?:)?//[A-Za-z0-9-]+\.[A-Za-z0-9.-]+[^\s\"')]*", text)
        assert set(urls) <= {"http://www.w3.org/2000/svg"}, (path.name, urls)  # an XML namespace, never fetched
        assert "@import" not in text and "url(" not in text


def test_gated_hub_model_shows_the_cli_message_through_the_real_command(tmp_path, tiny_llama_dir):
    """`lorakit studio` as a process (huggingface_hub reads HF_ENDPOINT at import) against the fake Hub."""
    workdir = tmp_path / "work"
    (workdir / "data").mkdir(parents=True)
    write_qa_jsonl(workdir / "data" / "qa.jsonl")
    with FakeHub(valid_tokens={"hf_Granted0123456789", "hf_Other0123456789"}) as hub:
        hub.add("lorakit-tests/gated-llama", tiny_llama_dir, gated=True, granted_tokens={"hf_Granted0123456789"})
        env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"), "HF_TOKEN": "hf_Other0123456789",
               "HF_HUB_ETAG_TIMEOUT": "2", "HF_HUB_DOWNLOAD_TIMEOUT": "2"}
        with studio_process(workdir, env) as url:
            body = json.dumps({**run_choices("lorakit-tests/gated-llama"), "gpu_memory": "8GB"}).encode()
            request = urllib.request.Request(url + "/api/plan", body, {"Content-Type": "application/json"})
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=60)
            answer = json.loads(refused.value.read())
    assert answer["kind"] == "HubAccessError"
    assert "lorakit-tests/gated-llama is a gated model and your account has not been granted access (403" in answer["error"]
    assert f"Request access on the model page {hub.url}/lorakit-tests/gated-llama" in answer["hint"]


@pytest.fixture
def finished_run(client, tiny_llama_dir, tmp_path_factory) -> str:
    """The evaluation tests' tiny run (trained and evaluated once a session), copied in as runs/tiny."""
    from evaluation.eval_runs import copy_run, evaluated_tiny_run

    workspace = client.app.state.workspace
    copy_run(evaluated_tiny_run(tiny_llama_dir, tmp_path_factory.getbasetemp() / "eval-workspace"),
             workspace.runs_dir / "tiny")
    return "tiny"


def _sse(client, run: str, body: dict) -> list[dict]:
    with client.stream("POST", f"/api/runs/{run}/chat", json=body) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        text = "".join(response.iter_text())
    return [json.loads(block.removeprefix("data: ")) for block in text.split("\n\n") if block.strip()]


def test_a_finished_run_reads_back_from_its_folder(client, finished_run):
    run = client.get(f"/api/runs/{finished_run}").json()
    assert run["finished"] and run["has_eval"] and run["progress"]["step"] == run["progress"]["max_steps"] == 4
    assert [r["step"] for r in run["metrics"]] == [1, 2, 3, 4] and "val_loss" in run["metrics"][1]
    assert {job: status["state"] for job, status in run["jobs"].items()} == {"train": "none", "eval": "none",
                                                                           "export": "none"}
    results = client.get(f"/api/runs/{finished_run}/eval").json()["results"]
    written = [json.loads(line) for line in
               (client.app.state.workspace.runs_dir / finished_run / "eval" / "safety_answers.jsonl").read_text().splitlines()]
    assert results["safety_answers"] == written and results["eval"]["safety"]["probes"] + results["eval"]["safety"]["twins"] == len(written)
    assert set(results["category_labels"]) >= {c["category"] for c in results["eval"]["safety"]["categories"]}


@pytest.mark.parametrize("body,args", [
    ({}, ["--safety", "--limit", "5"]),  # the page's defaults: safety on, knowledge off
    ({"knowledge": True, "limit": 2}, ["--safety", "--knowledge", "--limit", "2"]),
    ({"safety": False, "knowledge": True, "limit": None}, ["--knowledge"]),
])
def test_evaluate_starts_lorakit_eval_with_knowledge_when_asked(client, tmp_path, monkeypatch, body, args):
    from types import SimpleNamespace

    from lorakit.studio import routes_runs

    run_dir = tmp_path / "work" / "runs" / "r1"
    run_dir.mkdir(parents=True)
    started = []
    monkeypatch.setattr(routes_runs, "start_job", lambda folder, job, argv: started.append((folder, job, argv))
                        or SimpleNamespace(to_json=lambda: {"job": job, "state": "running"}))
    assert client.post("/api/runs/r1/eval", json=body).json() == {"job": "eval", "state": "running"}
    assert started == [(run_dir, "eval", ["eval", str(run_dir), *args])]


def test_a_finished_run_shows_its_knowledge_section_as_eval_json_has_it(client, finished_run):
    """The page renders knowledge from the same eval.json the HTML report reads (studio.js renderKnowledge)."""
    folder = client.app.state.workspace.runs_dir / finished_run / "eval"
    written = json.loads((folder / "eval.json").read_text())
    knowledge = {"limit_per_benchmark": 2, "lost": [], "benchmarks": [{"benchmark": "pubmedqa", "verdict": "lost"}]}
    (folder / "eval.json").write_text(json.dumps({**written, "knowledge": knowledge}))
    assert client.get(f"/api/runs/{finished_run}/eval").json()["results"]["eval"]["knowledge"] == knowledge


def test_chat_streams_the_tuned_answer_lorakit_chat_gives_and_the_base_answer(client, finished_run):
    from lorakit.inference.chat import ChatSession
    from lorakit.inference.generate import GenerationSettings, load_run

    question = [{"role": "user", "content": "What is asthma?"}]
    tuned = _sse(client, finished_run, {"model": "tuned", "messages": question})
    base = _sse(client, finished_run, {"model": "base", "messages": question})
    for events in (tuned, base):
        assert all("text" in e for e in events[:-1]) and len(events) > 1
        assert events[-1]["done"] is True and events[-1]["disclaimer"] == "Not medical advice."
        assert events[-1]["finish_reason"] in ("stop", "length")
    run = load_run(client.app.state.workspace.runs_dir / finished_run)
    cli = "".join(ChatSession(run, GenerationSettings.from_config(run.config)).ask("What is asthma?"))
    assert "".join(e["text"] for e in tuned[:-1]).strip() == cli.strip()
    assert "".join(e["text"] for e in base[:-1]) != "".join(e["text"] for e in tuned[:-1])
    refused = client.post(f"/api/runs/{finished_run}/chat", json={"messages": [{"role": "user", "content": " "}]})
    assert refused.json()["error"] == "The last message must be a question."


@pytest.mark.slow
def test_plan_for_the_embedded_model_is_what_lorakit_plan_prints(client, tmp_path):
    """The embedded model's config comes from its GGUF header (about 5 s on 2 cores), which the page's plan and
    plan_run here both read: parsed once for both (tests/export/gguf_parse_cache.py)."""
    from export.gguf_parse_cache import gguf_parsed_once
    from lorakit.plan.run_plan import parse_memory_size, plan_run

    _upload(client, "qa.jsonl", "{}\n")
    choices = {"run": "embedded", "data_files": ["qa.jsonl"], "preset": "balanced", "gpu_memory": "6GB"}
    with gguf_parsed_once():
        plan = client.post("/api/plan", json=choices).json()
        config = load_config(None, ["data.train_file=qa.jsonl"])
        expected, _, _ = plan_run(config, parse_memory_size("6GB"))
    assert plan["model"] == "smollm2-135m-instruct" and plan["model_type"] == "llama" and plan["lora_r"] == 16
    assert (plan["chosen"]["quantization"], plan["chosen"]["micro_batch"]) == (expected.quantization, expected.micro_batch)
    assert plan["chosen"]["on_gpu_gib"] == round(expected.chosen.estimate.peak_on_gpu() / 2**30, 2)
