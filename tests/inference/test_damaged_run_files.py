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
