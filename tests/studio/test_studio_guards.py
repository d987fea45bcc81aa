"""What the studio refuses to do for a request: changes sent by other web sites, `--set` lines that leave the
working folder or let a model run code, half-written uploads; and the redacted copy of a table is JSON Lines
(`lorakit data redact` names and writes it alike: tests/cli/test_data_cli.py)."""

from __future__ import annotations

import json
import resource
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient
from studio_harness import STUDIO_URL, run_choices, studio_client

from lorakit.studio import routes_runs

OWN_ORIGIN = STUDIO_URL
CROSS_SITE_HINT = f"Use the studio page itself, {OWN_ORIGIN}/; other web sites may not change your data, runs or jobs."


@pytest.fixture
def client(tmp_path) -> TestClient:
    return studio_client(tmp_path / "work")


@pytest.fixture
def stops(monkeypatch) -> list[tuple[str, str]]:
    """The (run, job) of every stop_job call that got through; the run r1 exists."""
    calls: list[tuple[str, str]] = []

    def fake_stop(run_dir: Path, job: str, timeout_s: float = 0.0):
        calls.append((run_dir.name, job))
        return SimpleNamespace(to_json=lambda: {"job": job, "state": "stopped"})

    monkeypatch.setattr(routes_runs, "stop_job", fake_stop)
    return calls


# --- cross-site requests -------------------------------------------------------------------------------------

def test_a_cross_site_form_cannot_stop_a_job(client, tmp_path, stops):
    (tmp_path / "work" / "runs" / "r1").mkdir()
    response = client.post("/api/runs/r1/train/stop", headers={"Origin": "http://evil.example"})
    assert response.status_code == 403
    assert response.json() == {
        "error": "Cross-site request refused: Origin 'http://evil.example' is not this server's origin "
                 f"'{OWN_ORIGIN}'.",
        "hint": CROSS_SITE_HINT, "kind": "CrossSiteRequest"}
    # A browser that hides the Origin still marks the request as coming from another site.
    response = client.post("/api/runs/r1/train/stop", headers={"Sec-Fetch-Site": "cross-site"})
    assert response.status_code == 403
    assert response.json() == {
        "error": "Cross-site request refused: the browser marked it as sent by another site (Sec-Fetch-Site: "
                 "cross-site).", "hint": CROSS_SITE_HINT, "kind": "CrossSiteRequest"}
    assert stops == []


@pytest.mark.parametrize("headers", [{"Origin": OWN_ORIGIN, "Sec-Fetch-Site": "same-origin"},
                                     {"Origin": OWN_ORIGIN.upper()}, {}])
def test_the_studio_page_itself_and_programs_without_origin_can_stop_a_job(client, tmp_path, stops, headers):
    (tmp_path / "work" / "runs" / "r1").mkdir()
    response = client.post("/api/runs/r1/train/stop", headers=headers)
    assert (response.status_code, response.json()) == (200, {"job": "train", "state": "stopped"})
    assert stops == [("r1", "train")]


def test_same_origin_under_the_name_localhost_passes(tmp_path, stops):
    client = studio_client(tmp_path / "work", "http://localhost:7860")
    (tmp_path / "work" / "runs" / "r1").mkdir()
    assert client.post("/api/runs/r1/eval/stop", headers={"Origin": "http://localhost:7860"}).status_code == 200
    assert client.post("/api/runs/r1/eval/stop", headers={"Origin": OWN_ORIGIN}).status_code == 403
    assert stops == [("r1", "eval")]


def test_every_state_changing_method_is_guarded_but_reads_and_links_are_not(client, tmp_path):
    foreign = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
    upload = client.put("/api/data/files/qa.jsonl", content=b"{}\n", headers=foreign)
    assert upload.status_code == 403 and upload.json()["kind"] == "CrossSiteRequest"
    assert list((tmp_path / "work" / "data").iterdir()) == []
    for method in ("POST", "PATCH", "DELETE"):
        assert client.request(method, "/api/runs", headers=foreign).status_code == 403, method
    # A link from another site opens the page; the browser keeps that site from reading JSON answers.
    assert client.get("/", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 200
    assert client.get("/api/runs", headers=foreign).json() == {"runs": [], "finished": []}


# --- overrides the page may not set ---------------------------------------------------------------------------

CODE_BY_HAND = "must be turned on by hand in a config file, run with `lorakit train CONFIG`"
REFUSED = {
    "output_dir=/elsewhere": ("output_dir", "the studio writes each run to WORKDIR/runs/RUN itself"),
    "model.trust_remote_code=true": ("model.trust_remote_code",
                                     f"running Python code shipped with a model {CODE_BY_HAND}"),
    "model.allow_pickle=true": ("model.allow_pickle", f"loading pickle weights (which can run code) {CODE_BY_HAND}"),
    " model = {allow_pickle: true}": ("model.allow_pickle",
                                      f"loading pickle weights (which can run code) {CODE_BY_HAND}"),
}


@pytest.mark.parametrize("line", list(REFUSED))
def test_an_override_the_page_may_not_set_is_422_naming_it_and_why(client, tmp_path, line):
    assert client.put("/api/data/files/qa.jsonl", content=b"{}\n").status_code == 200
    key, why = REFUSED[line]
    for route in ("/api/runs", "/api/plan"):
        response = client.post(route, json=run_choices("some-model", ["training.max_steps=7", line]))
        assert response.status_code == 422, route
        assert response.json() == {
            "error": f"overrides: '{line.strip()}' sets {key}, which the page may not set: {why}.",
            "hint": "Remove the line. For such a run, write a config file and run `lorakit train CONFIG` from a "
                    "terminal.", "kind": "RefusedOverride"}
    assert list((tmp_path / "work" / "runs").iterdir()) == []


def test_every_refused_override_is_named_at_once(client):
    lines = ["output_dir=/elsewhere", "lora.r=4", "model.trust_remote_code=true"]
    error = client.post("/api/runs", json=run_choices("some-model", lines)).json()["error"]
    assert error.splitlines() == [
        "overrides: 'output_dir=/elsewhere' sets output_dir, which the page may not set: the studio writes each "
        "run to WORKDIR/runs/RUN itself.",
        f"'model.trust_remote_code=true' sets model.trust_remote_code, which the page may not set: running Python "
        f"code shipped with a model {CODE_BY_HAND}."]


def test_data_file_and_other_overrides_still_apply(client, tmp_path, tiny_llama_dir):
    assert client.put("/api/data/files/qa.jsonl", content=b"{}\n").status_code == 200
    assert client.put("/api/data/files/more.jsonl", content=b"{}\n").status_code == 200
    more = (tmp_path / "work").resolve() / "data" / "more.jsonl"
    saved = client.post("/api/runs", json=run_choices(str(tiny_llama_dir), [f"data.train_file={more}",
                                                                             "model.max_length=128"]))
    assert saved.status_code == 200, saved.json()
    text = Path(saved.json()["config_path"]).read_text()
    assert f"train_file: {more}" in text and "max_length: 128" in text
    assert "trust_remote_code: false" in text and "allow_pickle: false" in text


# --- uploads --------------------------------------------------------------------------------------------------

@pytest.fixture
def file_size_limit():
    """`limit(n)`: writes beyond n bytes fail with EFBIG, as on a full disk (restored after the test)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of killing the process
    try:
        yield lambda size: resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_an_upload_that_fails_mid_write_leaves_nothing_and_can_be_retried(client, tmp_path, file_size_limit):
    data = (tmp_path / "work").resolve() / "data"
    body = b'{"instruction": "Q", "response": "A"}\n' * 60_000  # 2.3 MB
    file_size_limit(1 << 20)
    response = client.put("/api/data/files/qa.jsonl", content=body)
    file_size_limit(resource.RLIM_INFINITY)
    assert response.status_code == 400 and response.json()["kind"] == "DiskFullError"
    assert response.json()["error"].startswith(f"The disk is full: writing {data}/.qa.jsonl.upload-")
    assert "File too large" in response.json()["error"]
    assert list(data.iterdir()) == []  # no truncated qa.jsonl, no staging file
    retry = client.put("/api/data/files/qa.jsonl", content=body)
    assert (retry.status_code, retry.json()) == (200, {"name": "qa.jsonl", "bytes": len(body)})
    assert (data / "qa.jsonl").read_bytes() == body


def test_an_upload_racing_another_of_the_same_name_never_replaces_it(client, tmp_path, monkeypatch):
    """The other upload finishes after this one's early check: this one must still not write over it."""
    target = (tmp_path / "work").resolve() / "data" / "qa.jsonl"
    target.write_text("first upload\n")
    real_exists = Path.exists
    monkeypatch.setattr(Path, "exists", lambda self, *a, **k: False if self == target else real_exists(self, *a, **k))
    response = client.put("/api/data/files/qa.jsonl", content=b"second upload\n")
    assert response.status_code == 400
    assert response.json() == {"error": f"{target} already exists.", "kind": "LorakitError",
                                "hint": "Rename the file before uploading, or pick it from the list."}
    assert target.read_text() == "first upload\n"
    assert [p.name for p in target.parent.iterdir()] == ["qa.jsonl"]


# --- redacting tables ----------------------------------------------------------------------------------------

TABLES = {
    "q.csv": 'instruction,response\n"Call me at 555-123-4567, what is BP?",Blood pressure.\nWhat is HR?,Heart rate.\n',
    "q.tsv": "instruction\tresponse\nCall me at 555-123-4567, what is BP?\tBlood pressure.\nWhat is HR?\tHeart rate.\n",
}


@pytest.mark.parametrize("name", list(TABLES))
def test_the_redacted_copy_of_a_table_is_jsonl_and_passes_the_studios_check(client, tmp_path, name):
    assert client.put(f"/api/data/files/{name}", content=TABLES[name].encode()).status_code == 200
    result = client.post("/api/data/redact", json={"file": name}).json()
    assert (result["output"], result["records"], result["changed_records"]) == ("q.redacted.jsonl", 2, 1)
    lines = (tmp_path / "work" / "data" / "q.redacted.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"instruction": "Call me at [PHONE], what is BP?", "response": "Blood pressure."},
        {"instruction": "What is HR?", "response": "Heart rate."}]
    report = client.post("/api/data/check", json={"files": ["q.redacted.jsonl"]}).json()
    assert (report["errors"], report["examples"], report["exit_code"]) == (0, 2, 0), report["issues"]

