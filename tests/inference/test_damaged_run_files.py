"""A run's JSON files that were edited or cut short after lorakit wrote them are an error naming the file and
what is wrong (exit 2), not a traceback."""

from __future__ import annotations

import pytest

from evaluation.eval_runs import copy_run, evaluated_tiny_run
from lorakit.cli.app import run_cli

HINT = ("hint: lorakit wrote this file and it was changed or cut short since: copy the folder again from where it "
        "was made, or run the command that writes it again.\n")


@pytest.fixture
def run(tiny_llama_dir, tmp_path_factory, tmp_path):
    return copy_run(evaluated_tiny_run(tiny_llama_dir, tmp_path_factory.getbasetemp() / "eval-workspace"),
                    tmp_path / "run")


def test_a_cut_short_manifest(run, capsys):
    manifest = run / "final" / "manifest.json"
    manifest.write_text('{"data": {"sha256": "ab"}')
    assert run_cli(["chat", str(run), "-q", "What is asthma?"]) == 2
    assert capsys.readouterr().err == (f"error: {manifest} is damaged: it cannot be read (Expecting ',' delimiter: "
                                       "line 1 column 26 (char 25)).\n" + HINT)


def test_a_manifest_without_the_data_hash(run, tmp_path, capsys):
    manifest = run / "final" / "manifest.json"
    manifest.write_text('{"data": {}, "settings": {}}')
    assert run_cli(["export", str(run), "--format", "adapter", "--output", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == f"error: {manifest} is damaged: it has no ['data']['sha256'].\n" + HINT
    assert not (tmp_path / "out").exists()


def test_a_cut_short_eval_json(run, tmp_path, capsys):
    evaluation = run / "eval" / "eval.json"
    evaluation.write_text('{"adapter_sha256": ')
    assert run_cli(["export", str(run), "--format", "adapter", "--output", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == (f"error: {evaluation} is damaged: it cannot be read (Expecting value: line 1 "
                                       "column 20 (char 19)).\n" + HINT)


TAMPERED_HINT = ("hint: Copy the run folder again from where it was trained (or train again); lorakit loads no "
                 "adapter file it cannot verify.\n")
PICKLE = b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00\x8c\x01x\x94."  # pickle.dumps("x"): any pickle will do


@pytest.mark.parametrize("command", [["chat", "-q", "What is asthma?"], ["eval"], ["serve"],
                                     ["export", "--format", "adapter"], ["push", "--repo-id", "me/x"]])
def test_a_pickled_adapter_in_place_of_the_safetensors_is_refused_by_every_command(run, capsys, command):
    final = run / "final"
    (final / "adapter_model.safetensors").unlink()
    (final / "adapter_model.bin").write_bytes(PICKLE)  # peft would torch.load it
    assert run_cli([command[0], str(run), *command[1:]]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: The adapter in {final} is not the one training wrote: {final / 'adapter_model.bin'} is a "
                   "pickled file that lorakit never writes (loading it can run code), and the manifest does not "
                   "record it.\n" + TAMPERED_HINT)
    assert not (run / "export").exists()


def test_changed_adapter_weights_are_named(run, capsys):
    weights = run / "final" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    weights.write_bytes(bytes(data))
    assert run_cli(["export", str(run), "--format", "adapter"]) == 2
    assert capsys.readouterr().err == (
        f"error: The adapter in {run / 'final'} is not the one training wrote: {weights} does not match the sha256 its "
        "manifest records (changed since training wrote it).\n" + TAMPERED_HINT)
    assert not (run / "export").exists()


def test_the_record_covers_what_export_copies_and_the_exported_adapter_verifies(run, tmp_path, capsys):
    import json

    manifest = json.loads((run / "final" / "manifest.json").read_text())
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json"} <= set(manifest["adapter_files_sha256"])
    assert not {"README.md", "config.yaml", "manifest.json"} & set(manifest["adapter_files_sha256"])
    assert run_cli(["export", str(run), "--format", "adapter", "--output", str(tmp_path / "out")]) == 0
    from lorakit.run.source import resolve_run_source

    assert resolve_run_source(tmp_path / "out").adapter_dir == tmp_path / "out"  # the copy verifies too
