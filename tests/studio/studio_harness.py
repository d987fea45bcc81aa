"""Shared by the studio tests: a broken data file with known problems, the tiny-run settings, the page's choices
for a run, and the studio under FastAPI's TestClient or served on 127.0.0.1 (in a thread of the test process, or
as the real `lorakit studio` command)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from conftest import free_port

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

BROKEN_JSONL = "\n".join([
    '{"instruction": "What is asthma?", "response": "A chronic disease of the airways."}',
    '{"instruction": "What is gout?", "response": "Arthritis from urate crystals."',
    '{"instruction": "What is anemia?", "response": ""}',
    '{"instruction": "Patient MRN 12345678, call 555-123-4567: what is her diagnosis?", "response": "I cannot say."}',
    '{"instruction": "What is a fever?", "response": "A chronic disease of the airways."}',
]) + "\n"
# (location, severity, code) that `lorakit data check` reports for BROKEN_JSONL, in its order.
BROKEN_PROBLEMS = [("broken.jsonl:1", "warning", "shared-answer"), ("broken.jsonl:2:78", "error", "invalid-json"),
                   ("broken.jsonl:3", "error", "empty-field"), ("broken.jsonl:4", "error", "phi-mrn"),
                   ("broken.jsonl:4", "error", "phi-phone")]

# A run of a few seconds on the tiny model (tests/conftest.py), written as the page's "more settings" lines.
TINY_OVERRIDES = ["model.max_length=128", "lora.r=4", "lora.alpha=8", "training.batch_size=2",
                  "training.max_steps=4", "training.logging_steps=1", "training.eval_steps=2", "training.save_steps=2",
                  "training.lr_scheduler=constant", "training.learning_rate=0.01", "data.validation_split=0.2",
                  "data.test_split=0.2", "eval.max_new_tokens=6", "inference.max_new_tokens=6",
                  "inference.temperature=0"]

# The address the studio serves on by default; TestClient requests come from (and are sent to) it.
STUDIO_URL = "http://127.0.0.1:7860"


def studio_client(workdir: Path, base_url: str = STUDIO_URL) -> TestClient:
    """The studio app on `workdir` under FastAPI's TestClient, as if served at `base_url`."""
    from fastapi.testclient import TestClient

    from lorakit.studio.app import create_app

    return TestClient(create_app(workdir), base_url=base_url)


def run_choices(model: str, overrides: list[str] = TINY_OVERRIDES, run: str = "r1", **extra) -> dict:
    """What the page sends to /api/runs and /api/plan: `model` on data/qa.jsonl with the "quick" preset and
    `overrides`; `extra` adds or replaces fields."""
    return {"run": run, "model": model, "data_files": ["qa.jsonl"], "preset": "quick", "overrides": overrides,
            **extra}


def wait_until_up(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url + "/api/presets", timeout=2).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@contextlib.contextmanager
def studio_in_thread(workdir: Path) -> Iterator[str]:
    """The studio app under uvicorn in a thread of this process; yields its base URL."""
    import uvicorn

    from lorakit.studio.app import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(workdir), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_until_up(url)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(15)


@contextlib.contextmanager
def studio_process(workdir: Path, env: dict[str, str]) -> Iterator[str]:
    """The real `lorakit studio` command in a subprocess (huggingface_hub reads HF_* variables at import)."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "lorakit", "studio", "--port", str(port), "--workdir",
                                str(workdir)], env={**os.environ, **env}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url)
        yield url
    finally:
        process.terminate()
        process.wait(15)
