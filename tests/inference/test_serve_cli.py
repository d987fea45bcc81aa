"""`lorakit serve` command line: options reach the library call; the real command serves and stops on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest
from conftest import free_port
from evaluation.eval_runs import trained_tiny_run

from lorakit.cli.app import run_cli
from lorakit.config import ServeConfig
from lorakit.run.source import Permissions

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def served(monkeypatch) -> list:
    calls = []
    monkeypatch.setattr("lorakit.inference.serve.serve_run",
                        lambda run_dir, options, permissions: calls.append((run_dir, options, permissions)))
    return calls


def test_defaults_bind_loopback(served, tmp_path, monkeypatch):
    monkeypatch.delenv("LORAKIT_API_KEY", raising=False)
    assert run_cli(["serve", str(tmp_path)]) == 0
    assert served == [(tmp_path, ServeConfig(host="127.0.0.1", port=8000, api_key=None, batch_size=8, queue_size=8,
                                             disclaimer=True),
                       Permissions(trust_remote_code=False, allow_pickle=False))]


def test_options_reach_serve_run(served, tmp_path):
    argv = ["serve", str(tmp_path), "--host", "0.0.0.0", "--port", "9001", "--api-key", "k3y", "--queue-size", "3",
            "--batch-size", "2", "--no-disclaimer", "--trust-remote-code", "--allow-pickle"]
    assert run_cli(argv) == 0
    assert served == [(tmp_path, ServeConfig(host="0.0.0.0", port=9001, api_key="k3y", batch_size=2, queue_size=3,
                                             disclaimer=False),
                       Permissions(trust_remote_code=True, allow_pickle=True))]


def test_api_key_from_environment(served, tmp_path, monkeypatch):
    monkeypatch.setenv("LORAKIT_API_KEY", "from-env")
    assert run_cli(["serve", str(tmp_path)]) == 0
    assert served[0][1].api_key == "from-env"


@pytest.mark.parametrize("argv, message", [
    (["--port", "0"], "Invalid value for '--port': Input should be greater than or equal to 1"),
    (["--queue-size", "2000"], "Invalid value for '--queue-size': Input should be less than or equal to 1024"),
    (["--api-key", " "], "--api-key is empty"),
])
def test_bad_options_are_usage_errors(served, tmp_path, capsys, argv, message):
    assert run_cli(["serve", str(tmp_path), *argv]) == 2
    assert message in " ".join(capsys.readouterr().err.split())
    assert served == []


def test_missing_run_is_exit_2_before_binding(tmp_path, capsys):
    assert run_cli(["serve", str(tmp_path / "nope")]) == 2
    assert f"{tmp_path / 'nope'} does not exist." in " ".join(capsys.readouterr().err.split())


def test_real_command_serves_and_stops_on_ctrl_c(tiny_llama_dir, tmp_path_factory):
    run_dir = trained_tiny_run(tiny_llama_dir, tmp_path_factory.mktemp("serve-cli"))
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("LORAKIT_API_KEY", None)
    server = subprocess.Popen([sys.executable, "-m", "lorakit", "serve", str(run_dir), "--port", str(port)], cwd=REPO,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        api = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=60)
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                models = api.models.list()
                break
            except openai.APIConnectionError:
                assert time.monotonic() < deadline, "lorakit serve did not come up in 90 s"
                time.sleep(0.25)
        assert [m.id for m in models.data] == ["run"]
        reply = api.chat.completions.create(model="run", messages=[{"role": "user", "content": "What is a fever?"}])
        assert reply.choices[0].message.content.endswith("Not medical advice.")
    finally:
        server.send_signal(signal.SIGINT)
        output = server.communicate(timeout=30)[0]
    assert server.returncode == 0, output
    assert f"Uvicorn running on http://127.0.0.1:{port}" in output
