"""What leaves the machine: an exported adapter's config.yaml and manifest.json (and every other file it holds)
name no training file, no source URL and no local path, keep hashes, counts and settings, and still load."""

from __future__ import annotations

import json

import pytest
import yaml
from export.export_runs import leaks, run_on_patient_named_data, secrets_of

from lorakit.cli.app import run_cli
from lorakit.config import EMBEDDED_MODEL_ALIAS
from lorakit.run.source import read_finished_run
from lorakit.run.manifest import public_base_model_id
from lorakit.run.source import resolve_run_source


@pytest.fixture(scope="module")
def patient_run(tiny_llama_dir, tmp_path_factory):
    return run_on_patient_named_data(tiny_llama_dir, tmp_path_factory.mktemp("patient-run"))


def test_the_run_itself_records_what_the_export_must_not_publish(patient_run, tiny_llama_dir):
    """The premise: final/ names the data file, the source URL and local paths (it stays on this machine)."""
    final = {p.name: p.read_bytes() for p in (patient_run / "final").iterdir()}
    assert {name for name, _ in leaks(final, secrets_of(patient_run, tiny_llama_dir))} >= {"config.yaml", "manifest.json"}


def test_exported_adapter_names_no_data_file_url_or_local_path_and_still_loads(patient_run, tiny_llama_dir, tmp_path):
    output = tmp_path / "adapter"
    assert run_cli(["export", str(patient_run), "--format", "adapter", "--output", str(output)]) == 0
    exported = {p.name: p.read_bytes() for p in output.iterdir()}
    assert {"config.yaml", "manifest.json", "adapter_model.safetensors", "README.md"} <= set(exported)
    assert leaks(exported, secrets_of(patient_run, tiny_llama_dir)) == []

    original = json.loads((patient_run / "final" / "manifest.json").read_text())
    manifest = json.loads(exported["manifest.json"])
    assert manifest["data"]["sha256"] == original["data"]["sha256"]
    assert manifest["data"]["train_file_count"] == 1 and manifest["data"]["source_url_count"] == 1
    assert manifest["data"]["file_formats"] == ["instruction"] and manifest["data"]["truncated"] == 0
    assert manifest["split_sizes"] == original["split_sizes"] and manifest["metrics"] == original["metrics"]
    assert manifest["settings"] == original["settings"] and "local_path" not in manifest["base_model"]
    assert manifest["base_model"]["weights_sha256"] == original["base_model"]["weights_sha256"]
    assert manifest["base_model"]["id"] == manifest["identity"]["model_id"] == original["base_model"]["public_name"]
    config = yaml.safe_load(exported["config.yaml"])
    assert config["data"]["train_file"] == "not-published.jsonl" and config["output_dir"] == "runs/lorakit"
    assert config["model"]["name"] == original["base_model"]["public_name"] and config["lora"]["r"] == 4

    # The copy still loads where an adapter folder is read: chat/eval (run_source) and export/push again.
    source = resolve_run_source(output)
    assert source.data_sha256 == original["data"]["sha256"] and source.config.data.system_prompt == "Be careful."
    run = read_finished_run(output)
    assert run.config.training.max_steps == 4 and run.manifest["data"]["phi_findings_allowed"] == 0


def test_public_base_model_id_keeps_hub_ids_and_the_embedded_alias():
    def manifest(model_id, public_name=None):
        base = {"id": model_id, "revision": None}
        return {"base_model": base if public_name is None else {**base, "public_name": public_name}}

    assert public_base_model_id(manifest("microsoft/Phi-4-mini-instruct", "microsoft/Phi-4-mini-instruct")) == \
        "microsoft/Phi-4-mini-instruct"
    assert public_base_model_id(manifest(EMBEDDED_MODEL_ALIAS, "HuggingFaceTB/SmolLM2-135M-Instruct")) == \
        EMBEDDED_MODEL_ALIAS
    assert public_base_model_id(manifest("/home/jane/models/phi", "microsoft/phi-2")) == "microsoft/phi-2"
    assert public_base_model_id(manifest("/home/jane/models/phi.gguf", "phi")) == "phi"
    # Manifests from before public_name was recorded:
    assert public_base_model_id(manifest("/home/jane/models/phi")) == "phi"
    assert public_base_model_id(manifest("microsoft/phi-2")) == "microsoft/phi-2"
