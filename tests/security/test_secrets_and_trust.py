"""Issue 4, point 7: the HF token never lands in any output or file; remote code and pickle need an explicit
opt-in; checkpoint state loads with torch.load(weights_only=True)."""

from __future__ import annotations

import ast
import json
import os
import pathlib
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml
from custom_code import with_custom_code
from safetensors.torch import load_file

from conftest import write_qa_jsonl
from fake_hub import FakeHub
from lorakit.cli.app import app as cli_app
from lorakit.cli.app import run_cli
from lorakit.config import ModelConfig, RunConfig
from lorakit.errors import CheckpointError
from lorakit.run.checkpoints import sha256_file
from lorakit.run.layout import CHECKPOINT_MANIFEST
from lorakit.training.loop import train

CANARY = "hf_LorakitCanaryToken7Qx93ZpL0wK2mN8vB4"
SRC = Path(__file__).resolve().parents[2] / "src" / "lorakit"


# --- the token ----------------------------------------------------------------------------------------------


def _sandbox_env(sandbox: Path, hub_url: str) -> dict:
    """Every place a run may write (home, caches, temp, HF home) inside `sandbox`, so it can all be searched."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
    for name in ("home", "cache", "tmp", "hf-home", "lorakit-cache", "mpl"):
        (sandbox / name).mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(sandbox / "home"), XDG_CACHE_HOME=str(sandbox / "cache"), TMPDIR=str(sandbox / "tmp"),
               HF_HOME=str(sandbox / "hf-home"), LORAKIT_CACHE_DIR=str(sandbox / "lorakit-cache"),
               MPLCONFIGDIR=str(sandbox / "mpl"), HF_ENDPOINT=hub_url, HF_TOKEN=CANARY, OMP_NUM_THREADS="1",
               HF_HUB_ETAG_TIMEOUT="5", HF_HUB_DOWNLOAD_TIMEOUT="5", COLUMNS="200")
    return env


def _lorakit(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lorakit", *args], capture_output=True, env=env, timeout=600)


def _files_containing(root: Path, needle: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and not p.is_symlink() and needle in p.read_bytes()]


@pytest.mark.slow
def test_secrets_and_trust_the_hf_token_never_appears_in_anything_a_run_writes(tiny_llama_dir, tmp_path):
    sandbox = tmp_path / "sandbox"
    with FakeHub(valid_tokens={CANARY}) as hub:
        # Gated: the download only works because the token is sent, so it is certainly in play.
        hub.add("lorakit-tests/gated-llama", tiny_llama_dir, gated=True, granted_tokens={CANARY})
        env = _sandbox_env(sandbox, hub.url)
        data = write_qa_jsonl(sandbox / "qa.jsonl")
        config = sandbox / "config.yaml"
        config.write_text(yaml.safe_dump({
            "seed": 1, "output_dir": str(sandbox / "run"),
            "model": {"name": "lorakit-tests/gated-llama", "max_length": 128}, "lora": {"r": 4, "alpha": 8},
            "training": {"batch_size": 2, "max_steps": 3, "learning_rate": 0.01, "logging_steps": 1, "eval_steps": 2,
                         "save_steps": 2},
            "data": {"train_file": str(data), "system_prompt": "Be careful."},
            "inference": {"max_new_tokens": 4, "temperature": 0.0},
            "eval": {"max_new_tokens": 4},
        }))
        commands = [
            ("train", "train", str(config)),
            ("chat --debug", "--debug", "chat", str(sandbox / "run"), "--question", "What is insulin?"),
            ("eval", "eval", str(sandbox / "run"), "--limit", "1", "--max-new-tokens", "4", "--safety"),
            ("train, no access", "train", str(config), "--set", f"output_dir={sandbox / 'run-2'}",
             "--set", "model.name=lorakit-tests/private-llama"),
            ("doctor", "doctor"),  # reports whether a token is configured
        ]
        if "eval" not in {group.name for group in cli_app.registered_groups}:
            commands = [c for c in commands if c[1] != "eval"]  # `lorakit eval` is not registered in this checkout
        # `train, no access` and `doctor` need nothing from the others: they run one after the other beside `train`,
        # and `chat --debug` and `eval` (which only read the trained run) beside each other after it (each command is
        # mostly interpreter and torch start-up, so the 2 cores stay busy).
        beside = ("train, no access", "doctor")
        after_train = [(name, args) for name, *args in commands if name not in beside and name != "train"]
        with ThreadPoolExecutor(max_workers=1) as pool, ThreadPoolExecutor(max_workers=1) as second:
            started = {name: pool.submit(_lorakit, env, *args) for name, *args in commands if name in beside}
            outputs = {"train": _lorakit(env, *next(args for name, *args in commands if name == "train"))}
            also = {name: second.submit(_lorakit, env, *args) for name, args in after_train[1:]}
            outputs.update({name: _lorakit(env, *args) for name, args in after_train[:1]})
            outputs.update({name: future.result() for name, future in (also | started).items()})
        authorizations = {auth for _, _, auth in hub.requests}

    assert f"Bearer {CANARY}" in authorizations  # the token was really used
    assert outputs["train"].returncode == 0, outputs["train"].stderr.decode()
    assert outputs["chat --debug"].returncode == 0, outputs["chat --debug"].stderr.decode()
    assert outputs["train, no access"].returncode == 2
    if "eval" in outputs:
        assert outputs["eval"].returncode == 0, outputs["eval"].stderr.decode()
    for name, result in outputs.items():
        for stream in (result.stdout, result.stderr):
            assert CANARY.encode() not in stream, f"token printed by `lorakit {name}`"
            assert CANARY[3:].encode() not in stream
    written = [p for p in sandbox.rglob("*") if p.is_file()]
    run = sandbox / "run"
    for expected in ("tensorboard", "checkpoints", "final/manifest.json", "final/config.yaml", "manifest.json",
                     "metrics.jsonl"):
        assert (run / expected).exists(), expected  # the search below covers real artifacts
    assert len(written) > 20
    assert "hugging face token" in outputs["doctor"].stdout.decode().lower()
    print(f"\ntoken search: {len(written)} files, {sum(p.stat().st_size for p in written)} bytes, "
          f"{2 * len(outputs)} output streams from {', '.join(outputs)}")
    assert _files_containing(sandbox, CANARY.encode()) == []
    assert _files_containing(sandbox, CANARY[3:].encode()) == []


# --- remote code ------------------------------------------------------------------------------------------


def _config_file(tmp_path: Path, model_dir: Path, **model) -> Path:
    data = write_qa_jsonl(tmp_path / "qa.jsonl")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "output_dir": str(tmp_path / "run"), "model": {"name": str(model_dir), "max_length": 128, **model},
        "lora": {"r": 4, "alpha": 8},
        "training": {"batch_size": 2, "max_steps": 1, "eval_steps": 1, "save_steps": 1},
        "data": {"train_file": str(data), "system_prompt": "Be careful."},
    }))
    return path


def test_secrets_and_trust_trust_remote_code_is_off_unless_the_config_sets_it(tmp_path):
    assert ModelConfig().trust_remote_code is False
    config = RunConfig.model_validate({"data": {"train_file": "x.jsonl"}})
    assert config.model.trust_remote_code is False and config.model.allow_pickle is False


@pytest.mark.parametrize("part", ["model", "tokenizer"])
def test_secrets_and_trust_trust_remote_code_off_refuses_custom_code_without_running_it(
    tiny_llama_dir, tmp_path, capsys, part
):
    marker = tmp_path / "marker"
    model_dir = with_custom_code(tiny_llama_dir, tmp_path / "custom", marker, part)
    assert run_cli(["train", str(_config_file(tmp_path, model_dir))]) == 2
    err = capsys.readouterr().err
    assert "needs custom Python code shipped with the model to load, and lorakit does not run it unless asked" in err
    assert "set model.trust_remote_code: true" in err and "Traceback" not in err
    assert not marker.exists()


def test_secrets_and_trust_trust_remote_code_hub_downloads_no_python_or_pickle_files_by_default(
    tiny_llama_dir, tmp_path
):
    repo = tmp_path / "repo"
    shutil.copytree(tiny_llama_dir, repo)
    (repo / "modeling_custom.py").write_text("raise SystemExit('must never be downloaded')\n")
    torch.save(load_file(repo / "model.safetensors"), repo / "pytorch_model.bin")
    fetch = ("from lorakit.model.hub import download_model\n"
             "print(sorted(p.name for p in download_model('lorakit-tests/mixed', None, allow_pickle=False, "
             "trust_remote_code=False).iterdir()))")
    with FakeHub() as hub:  # HF_ENDPOINT is read at import, hence a fresh interpreter
        hub.add("lorakit-tests/mixed", repo)
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf-home"))
        done = subprocess.run([sys.executable, "-c", fetch], capture_output=True, text=True, env=env, timeout=300)
        fetched = {path.rsplit("/", 1)[-1] for method, path, _ in hub.requests if "/resolve/" in path}
    assert done.returncode == 0, done.stderr
    files = set(ast.literal_eval(done.stdout.strip().splitlines()[-1]))
    assert {"model.safetensors", "config.json"} <= files
    assert not {"modeling_custom.py", "pytorch_model.bin"} & (files | fetched)


# --- pickle weights ---------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path(self.marker).write_text, ("pickle code ran",))


def _pickle_model(tiny_llama_dir: Path, directory: Path, *, keep_safetensors: bool, payload_marker: Path | None) -> Path:
    shutil.copytree(tiny_llama_dir, directory)
    state = dict(load_file(directory / "model.safetensors"))
    if payload_marker is not None:
        state["payload"] = _Payload(payload_marker)
    torch.save(state, directory / "pytorch_model.bin")
    if not keep_safetensors:
        (directory / "model.safetensors").unlink()
    return directory


def test_secrets_and_trust_pickle_weights_are_refused_without_allow_pickle(tiny_llama_dir, tmp_path, capsys):
    model_dir = _pickle_model(tiny_llama_dir, tmp_path / "pickled", keep_safetensors=False, payload_marker=None)
    assert run_cli(["train", str(_config_file(tmp_path, model_dir))]) == 2
    err = capsys.readouterr().err
    assert "holds only pickle weights (pytorch_model.bin), which can run arbitrary code when loaded" in err
    assert "--allow-pickle" in err and "Traceback" not in err


def test_secrets_and_trust_pickle_weights_load_with_allow_pickle(tiny_llama_dir, tmp_path, capsys):
    model_dir = _pickle_model(tiny_llama_dir, tmp_path / "pickled", keep_safetensors=False, payload_marker=None)
    assert run_cli(["train", str(_config_file(tmp_path, model_dir)), "--allow-pickle"]) == 0
    saved = yaml.safe_load((tmp_path / "run" / "final" / "config.yaml").read_text())
    assert saved["model"]["allow_pickle"] is True  # chat/eval of this run load the same way


def test_secrets_and_trust_pickle_safetensors_win_over_a_pickle_next_to_them_even_with_allow_pickle(
    tiny_llama_dir, tmp_path
):
    marker = tmp_path / "marker"
    model_dir = _pickle_model(tiny_llama_dir, tmp_path / "both", keep_safetensors=True, payload_marker=marker)
    assert run_cli(["train", str(_config_file(tmp_path, model_dir)), "--allow-pickle"]) == 0
    assert not marker.exists()


def test_secrets_and_trust_pickle_with_code_inside_is_refused_even_with_allow_pickle(tiny_llama_dir, tmp_path, capsys):
    marker = tmp_path / "marker"
    model_dir = _pickle_model(tiny_llama_dir, tmp_path / "evil", keep_safetensors=False, payload_marker=marker)
    assert run_cli(["train", str(_config_file(tmp_path, model_dir)), "--allow-pickle"]) == 2
    err = capsys.readouterr().err
    assert "holds pickle weights with Python objects other than tensors" in err and "Traceback" not in err
    assert not marker.exists()


# --- checkpoint state -------------------------------------------------------------------------------------


def _torch_load_calls(path: Path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
            yield node


def test_secrets_and_trust_checkpoint_state_every_torch_load_in_lorakit_is_weights_only():
    calls = [(path, node) for path in SRC.rglob("*.py") for node in _torch_load_calls(path)]
    assert calls, "expected the checkpoint loader to call torch.load"
    for path, node in calls:
        flags = {k.arg: k.value for k in node.keywords}
        assert "weights_only" in flags and isinstance(flags["weights_only"], ast.Constant) \
            and flags["weights_only"].value is True, f"{path}:{node.lineno} calls torch.load without weights_only=True"


def test_secrets_and_trust_checkpoint_state_with_code_inside_is_refused_on_resume(tiny_llama_dir, qa_file, tmp_path):
    from conftest import tiny_run_config

    config = tiny_run_config(tiny_llama_dir, qa_file, tmp_path / "run", max_steps=4, save_steps=2)
    train(config)
    shutil.rmtree(tmp_path / "run" / "final")
    checkpoint = tmp_path / "run" / "checkpoints" / "step-00000004"
    marker = tmp_path / "marker"
    state = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    state["payload"] = _Payload(marker)
    torch.save(state, checkpoint / "optimizer.pt")
    # Re-sign the manifest, as an attacker with write access could: only weights_only stands in the way.
    manifest = json.loads((checkpoint / CHECKPOINT_MANIFEST).read_text())
    manifest["files"]["optimizer.pt"] = sha256_file(checkpoint / "optimizer.pt")
    (checkpoint / CHECKPOINT_MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="contains pickled objects other than tensors, which lorakit refuses to load"):
        train(config, resume=True)
    assert not marker.exists()
