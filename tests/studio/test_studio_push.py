"""Push from the page: `lorakit push` as a background job against the loopback fake Hub, with the CLI's own
message when the login is missing, and the token in nothing the studio writes."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient

from fake_hub import FakeHub
from lorakit.studio.app import create_app

CANARY = "hf_StudioPushCanary7Qw2Er4Ty6Ui8Op0"
REPO = "lorakit-tests/studio-push"


def _wait(client, run: str) -> dict:
    deadline = time.monotonic() + 180
    while (job := client.get(f"/api/runs/{run}").json()["jobs"]["export"])["state"] == "running":
        assert time.monotonic() < deadline, job["log_tail"]
        time.sleep(0.3)
    return job


def test_push_uploads_privately_and_a_missing_login_is_the_cli_message(tiny_llama_dir, tmp_path, tmp_path_factory,
                                                                        monkeypatch):
    from evaluation.eval_runs import copy_run, trained_tiny_run

    client = TestClient(create_app(tmp_path / "work"), base_url="http://127.0.0.1")
    copy_run(trained_tiny_run(tiny_llama_dir, tmp_path_factory.getbasetemp() / "eval-workspace"),
             tmp_path / "work" / "runs" / "tiny")
    # The job is a new process: huggingface_hub reads these when it starts there.
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    with FakeHub(valid_tokens={CANARY}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        client.post("/api/runs/tiny/push", json={"repo_id": REPO}).raise_for_status()
        refused = _wait(client, "tiny")
        monkeypatch.setenv("HF_TOKEN", CANARY)
        client.post("/api/runs/tiny/push", json={"repo_id": REPO}).raise_for_status()
        pushed = _wait(client, "tiny")
    assert refused["state"] == "failed" and refused["exit_code"] == 2
    assert refused["error"] == f"Uploading to {REPO} needs a Hugging Face login (401 Unauthorized)."
    assert refused["hint"] and "hf auth login" in refused["hint"]
    assert pushed["state"] == "succeeded", pushed["log_tail"]
    assert f"uploaded adapter (private) to {hub.url}/{REPO}" in pushed["log_tail"]
    assert hub.created[REPO].private is True and "adapter_model.safetensors" in hub.created[REPO].files
    assert not [p for p in (tmp_path / "work").rglob("*") if p.is_file() and CANARY.encode() in p.read_bytes()]
