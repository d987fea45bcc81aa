"""Issue 9, point 4: `lorakit chat` and `lorakit eval` on a checkpoint of an unfinished run (the first thing a
user tries), what they say about a folder that holds no adapter, and a saved config.yaml that fails validation."""

from __future__ import annotations

import json
import shutil

import pytest

from evaluation.eval_runs import trained_tiny_run
from lorakit.cli.app import run_cli
from lorakit.run.source import resolve_run_source


@pytest.fixture
def unfinished_run(tiny_llama_dir, tmp_path_factory, tmp_path):
    """A run as it looks mid-training: checkpoints/ and metrics, but no final/, manifest.json or config.yaml."""
    finished = trained_tiny_run(tiny_llama_dir, tmp_path_factory.mktemp("eval-run"))
    run = tmp_path / "run"
    top_level_only = {"final", "manifest.json", "config.yaml", "eval", "report.html", "tensorboard"}
    shutil.copytree(finished, run, ignore=lambda folder, names: top_level_only & set(names) if folder == str(finished) else [])
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]
    return run


def _run(capsys, *argv):
    code = run_cli(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_chat_on_a_checkpoint_of_an_unfinished_run_answers(unfinished_run, capsys):
    checkpoint = unfinished_run / "checkpoints" / "step-00000002"
    code, out, err = _run(capsys, "chat", str(checkpoint), "-q", "What is insulin?")
    assert code == 0, err
    assert "question: What is insulin?" in out
    assert out.rstrip().endswith("Not medical advice.")  # the run's own disclaimer, read from the checkpoint
    source = resolve_run_source(checkpoint)
    assert (source.adapter_dir, source.run_dir, source.checkpoint_step) == (checkpoint, unfinished_run, 2)


def test_chat_on_the_unfinished_run_folder_names_the_checkpoint_to_pass(unfinished_run, capsys):
    code, _, err = _run(capsys, "chat", str(unfinished_run), "-q", "hi")
    newest = unfinished_run / "checkpoints" / "step-00000004"
    assert code == 2
    assert f"error: {unfinished_run} is an unfinished run: it has no final/ adapter yet (written when training ends)." in err
    assert f"hint: Pass its newest checkpoint, {newest}, or finish the run with `lorakit train CONFIG --resume`." in err
    assert "Traceback" not in err
    code, _, err = _run(capsys, "eval", str(unfinished_run / "checkpoints"))
    assert code == 2
    assert f"error: {unfinished_run / 'checkpoints'} holds a run's checkpoints; pass one of them, not the folder." in err
    assert f"hint: For example its newest, {newest}." in err


def test_eval_on_a_checkpoint_writes_its_own_eval_folder_and_no_report(unfinished_run, capsys):
    checkpoint = unfinished_run / "checkpoints" / "step-00000004"
    code, out, err = _run(capsys, "eval", str(checkpoint), "--limit", "1", "--max-new-tokens", "2")
    assert code == 0, err
    results = unfinished_run / "eval" / "step-00000004"
    assert f"answers and numbers: {results}" in out
    assert ("report: not written for a checkpoint; `lorakit report RUN_DIR` describes the run once it has finished"
            in out)
    written = json.loads((results / "eval.json").read_text())
    assert written["adapter_dir"] == str(checkpoint) and written["quality"]["answered"] == 1
    assert written["adapter_sha256"] == resolve_run_source(checkpoint).fingerprint
    assert not (unfinished_run / "eval" / "eval.json").exists() and not (unfinished_run / "report.html").exists()

    code, _, err = _run(capsys, "report", str(checkpoint))
    assert code == 2
    assert f"error: {checkpoint} is a checkpoint; a report describes a finished run and its final/ adapter." in err


def test_a_folder_that_is_neither_run_nor_checkpoint_says_what_was_expected(tmp_path, capsys):
    folder = tmp_path / "somewhere"
    folder.mkdir()
    (folder / "notes.txt").write_text("x")
    for command in (["chat", str(folder), "-q", "hi"], ["eval", str(folder)]):
        code, _, err = _run(capsys, *command)
        assert code == 2
        assert (f"error: {folder} holds no trained adapter: it is neither a run folder (expected "
                f"{folder / 'final' / 'adapter_config.json'}) nor a checkpoint folder (expected "
                f"{folder / 'checkpoint_manifest.json'}).") in err
        assert ("hint: Pass the output_dir of a `lorakit train` run, its final/ folder, or one of its "
                "checkpoints/step-N folders.") in err
        assert "Traceback" not in err


def test_a_damaged_checkpoint_is_named_with_its_problem(unfinished_run, capsys):
    checkpoint = unfinished_run / "checkpoints" / "step-00000002"
    (checkpoint / "adapter_model.safetensors").write_bytes(b"torn")
    code, _, err = _run(capsys, "chat", str(checkpoint), "-q", "hi")
    assert code == 2
    assert (f"error: Checkpoint {checkpoint} is damaged (adapter_model.safetensors does not match its recorded "
            "sha256).") in err


@pytest.mark.parametrize("where", ["final", "checkpoint"])
def test_a_saved_config_that_fails_validation_is_a_config_error_with_file_and_line(
        tiny_llama_dir, tmp_path_factory, tmp_path, capsys, where):
    finished = trained_tiny_run(tiny_llama_dir, tmp_path_factory.mktemp("eval-run"))
    run = tmp_path / "run"
    shutil.copytree(finished, run, ignore=shutil.ignore_patterns("eval", "report.html", "tensorboard"))
    folder = run / "final" if where == "final" else run / "checkpoints" / "step-00000004"
    saved = folder / "config.yaml"
    lines = saved.read_text().splitlines()
    line = lines.index("lora:") + 2  # the first key under lora:, 1-based
    lines[line - 1] = "  r: 0"
    saved.write_text("\n".join(lines) + "\n")
    if where == "checkpoint":  # keep the checkpoint's recorded sha256 consistent: only the config is wrong
        from lorakit.run.checkpoints import sha256_file
        from lorakit.run.layout import CHECKPOINT_MANIFEST

        manifest = json.loads((folder / CHECKPOINT_MANIFEST).read_text())
        manifest["files"]["config.yaml"] = sha256_file(saved)
        (folder / CHECKPOINT_MANIFEST).write_text(json.dumps(manifest))
    code, _, err = _run(capsys, "chat", str(folder), "-q", "hi")
    assert code == 2
    assert f"error: {saved}: 1 config problem:\n  - line {line}: lora.r: Input should be greater than or equal to 1 (got 0)" in err
    assert "hint: This config.yaml was saved with the adapter; it no longer validates" in err
    assert "Traceback" not in err and "ValidationError" not in err


def test_export_on_a_checkpoint_says_it_needs_a_finished_run(unfinished_run, capsys):
    checkpoint = unfinished_run / "checkpoints" / "step-00000002"
    code, _, err = _run(capsys, "export", str(checkpoint), "--format", "adapter", "-o", str(unfinished_run / "out"))
    assert code == 2
    assert f"error: {checkpoint} is a checkpoint; export and push need a finished run (its final/ adapter)." in err
    assert not (unfinished_run / "out").exists()


def test_interactive_chat_on_a_checkpoint_says_which_step_it_talks_to(unfinished_run, capsys, monkeypatch):
    from lorakit.cli.console import console

    lines = iter(["What is insulin?", "quit"])
    monkeypatch.setattr(console, "input", lambda prompt="": next(lines))
    checkpoint = unfinished_run / "checkpoints" / "step-00000004"
    code, out, err = _run(capsys, "chat", str(checkpoint), "--max-new-tokens", "3")
    assert code == 0, err
    assert f"Chatting with checkpoint step 4 ({checkpoint}). Type 'quit' or press Ctrl-D to leave." in err
    assert out.count("Not medical advice.") == 1
