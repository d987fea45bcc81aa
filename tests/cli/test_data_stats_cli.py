"""Issue 9, point 4: `lorakit data stats` without a config, with a model name as --tokenizer, and where the
histogram goes by default (next to the data, as --help says; it used to land in the current directory)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import TOKENIZER_DIR, write_qa_jsonl
from fake_hub import FakeHub
from lorakit.cli.app import run_cli
from lorakit.config import EMBEDDED_MODEL_ALIAS


def _run(capsys, *argv):
    code = run_cli(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_stats_without_tokenizer_or_config_says_what_to_pass_not_config_problem(tmp_path, capsys):
    data = write_qa_jsonl(tmp_path / "qa.jsonl")
    code, _, err = _run(capsys, "data", "stats", str(data))
    assert code == 2
    assert err.splitlines() == [
        "error: Token statistics need a tokenizer.",
        f"hint: Pass --tokenizer {EMBEDDED_MODEL_ALIAS} (or a Hub id, a model or tokenizer folder, a .gguf file), or "
        "--config CONFIG to use its model.",
    ]
    code, _, err = _run(capsys, "data", "stats")
    assert code == 2 and err.splitlines()[0] == "error: No data files given." and "config problem" not in err


def test_stats_histogram_goes_next_to_the_data_not_into_the_current_directory(tmp_path, capsys, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "elsewhere").mkdir()
    data = write_qa_jsonl(tmp_path / "data" / "qa.jsonl")
    monkeypatch.chdir(tmp_path / "elsewhere")
    code, out, _ = _run(capsys, "data", "stats", str(data), "--tokenizer", str(TOKENIZER_DIR))
    png = tmp_path / "data" / "qa.jsonl.lengths.png"
    assert code == 0
    assert f"histogram: {png}" in out
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_stats_tokenizer_accepts_the_embedded_alias(tmp_path, capsys, monkeypatch, tiny_llama_dir):
    """The alias goes through the same source resolution as training (the embedded GGUF's cached conversion,
    replaced here by the tiny model folder, whose tokenizer is SmolLM2's)."""
    from lorakit.model import named_tokenizer
    from lorakit.model.load import ModelSource

    asked = []

    def resolve(config):
        asked.append(config.name)
        return ModelSource(tiny_llama_dir, EMBEDDED_MODEL_ALIAS, None, "embedded")

    monkeypatch.setattr(named_tokenizer, "resolve_model_source", resolve)
    data = write_qa_jsonl(tmp_path / "qa.jsonl")
    code, out, err = _run(capsys, "data", "stats", str(data), "--tokenizer", EMBEDDED_MODEL_ALIAS, "--json",
                          "--no-histogram")
    assert code == 0, err
    assert asked == [EMBEDDED_MODEL_ALIAS]
    assert json.loads(out)["examples"] == 12


@pytest.mark.slow
def test_stats_tokenizer_embedded_alias_for_real(tmp_path, capsys):
    """The real embedded model counts like the committed fixture tokenizer. Its GGUF is converted into the session's
    cache (a fresh temporary folder: tests/session_caches.py), which the session's later embedded-model tests read,
    instead of a private cache that cost the session one more conversion."""
    data = write_qa_jsonl(tmp_path / "qa.jsonl")
    code, alias_out, err = _run(capsys, "data", "stats", str(data), "--tokenizer", EMBEDDED_MODEL_ALIAS, "--json",
                                "--no-histogram")
    assert code == 0, err
    code, fixture_out, _ = _run(capsys, "data", "stats", str(data), "--tokenizer", str(TOKENIZER_DIR), "--json",
                                "--no-histogram")
    assert json.loads(alias_out) == json.loads(fixture_out)


def test_stats_tokenizer_accepts_a_hub_id_and_fetches_no_weights(tmp_path, tiny_llama_dir):
    data = write_qa_jsonl(tmp_path / "qa.jsonl")
    with FakeHub() as hub:
        hub.add("lorakit-tests/tiny-llama", tiny_llama_dir)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
        env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_ETAG_TIMEOUT="5")
        result = subprocess.run([sys.executable, "-m", "lorakit", "data", "stats", str(data), "--tokenizer",
                                 "lorakit-tests/tiny-llama", "--json", "--no-histogram"],
                                capture_output=True, text=True, env=env, timeout=180)
        fetched = [path for method, path, _ in hub.requests if "/resolve/" in path]
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["examples"] == 12
    assert any(path.endswith("tokenizer.json") for path in fetched), fetched
    assert not [path for path in fetched if path.endswith(".safetensors")], fetched


@pytest.mark.parametrize("name", ["smollm2", "./no/such/folder", "not a model"])
def test_stats_tokenizer_that_names_nothing_says_what_is_accepted(tmp_path, capsys, name):
    data = write_qa_jsonl(tmp_path / "qa.jsonl")
    code, _, err = _run(capsys, "data", "stats", str(data), "--tokenizer", name)
    assert code == 2
    assert err.splitlines() == [
        f"error: --tokenizer: '{name}' is neither a model or tokenizer folder, a .gguf file, a Hub id (owner/name), "
        f"nor the embedded model '{EMBEDDED_MODEL_ALIAS}'.",
        f"hint: For example --tokenizer {EMBEDDED_MODEL_ALIAS}, or --tokenizer microsoft/Phi-4-mini-instruct.",
    ]


def test_stats_tokenizer_folder_without_tokenizer_files(tmp_path, capsys):
    data = write_qa_jsonl(tmp_path / "qa.jsonl")
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = _run(capsys, "data", "stats", str(data), "--tokenizer", str(empty))
    assert code == 2
    assert err.splitlines() == [f"error: --tokenizer: {empty} holds no tokenizer (no tokenizer.json or "
                                "tokenizer_config.json)."]


def test_split_seed_has_the_range_of_the_training_seed(tmp_path, capsys):
    data = write_qa_jsonl(tmp_path / "qa.jsonl")
    code, out, err = _run(capsys, "data", "split", str(data), "--out", str(tmp_path / "out"), "--seed", str(2**32))
    assert code == 2 and "Invalid value for '--seed': Input should be less than or equal to 4294967295" in out + err
    assert _run(capsys, "data", "split", str(data), "--out", str(tmp_path / "out"), "--seed", str(2**32 - 1))[0] == 0
