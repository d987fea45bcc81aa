"""Issue 22, fault matrix row 9: a Hugging Face token pasted into the wrong place (a config value, a `--set`
line of the studio's page) is never echoed back: not in the CLI's error (which a studio job writes to its log),
not in a `--debug` traceback or debug log, not in a studio JSON response. Config problems quote the value they
reject, so without the mask in LorakitError every one of these printed the token."""

from __future__ import annotations

import logging
import traceback

import pytest
import yaml

from lorakit.cli.app import run_cli
from lorakit.errors import ConfigError

TOKEN = "hf_LorakitEchoCanary4Hn72LwQ9sXe1VbT0"


def _config_with_token(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"data": {"train_file": "qa.jsonl"}, "training": {"max_steps": TOKEN}}))
    return config


def test_a_token_pasted_into_a_config_value_is_masked_in_the_error(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    code = run_cli(["train", str(_config_with_token(tmp_path)), "--set", f"training.learning_rate={TOKEN}"])
    out, err = capfd.readouterr()
    assert code == 2 and TOKEN not in out + err
    assert "training.max_steps: Input should be a valid integer" in err and err.count("(got 'hf_***')") == 2


def test_a_debug_traceback_and_debug_log_do_not_show_the_token(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ConfigError) as raised:
        run_cli(["--debug", "train", str(_config_with_token(tmp_path))])
    shown = "".join(traceback.format_exception(raised.value))
    assert "training.max_steps" in shown and TOKEN not in shown and TOKEN not in caplog.text
    assert all(TOKEN not in problem for problem in raised.value.problems)


def test_a_studio_response_does_not_echo_the_token(tmp_path, tiny_llama_dir):
    from fastapi.testclient import TestClient

    from lorakit.studio.app import create_app

    client = TestClient(create_app(tmp_path / "work"), base_url="http://127.0.0.1:7860")
    assert client.put("/api/data/files/qa.jsonl", content=b"{}\n").status_code == 200
    response = client.post("/api/runs", json={
        "run": "r1", "model": str(tiny_llama_dir), "data_files": ["qa.jsonl"], "preset": "quick",
        "overrides": [f"training.max_steps={TOKEN}"]})
    assert response.status_code in (400, 422) and response.json()["kind"] == "ConfigError"
    assert "hf_***" in response.text and TOKEN not in response.text
