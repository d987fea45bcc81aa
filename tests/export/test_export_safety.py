"""Every export is atomic: refused over an existing folder without --overwrite (and always over the run itself or
a folder holding it), refused up front when the disk is too small, and a failure in any step names the step and
leaves nothing behind (run dir unchanged)."""

from __future__ import annotations

import shutil
from collections import namedtuple

import pytest

from export.export_runs import tiny_run, tree_fingerprint
from lorakit.cli.app import run_cli
from lorakit.errors import DiskFullError, ExportError, OutputExistsError
from lorakit.export.run_export import ExportRequest, export_run


@pytest.fixture
def run_dir(tiny_llama_dir, tmp_path_factory, tmp_path):
    return tiny_run(tiny_llama_dir, tmp_path_factory.mktemp("train-llama"), tmp_path / "run")


def _boom(*args, **kwargs):
    raise RuntimeError("injected fault")


# (format, patched attribute, step that must be named)
FAULTS = [
    ("merged", "lorakit.export.run_export.load_base_for_merge", "load"),
    ("merged", "lorakit.export.run_export.merge_run", "merge"),
    ("merged", "lorakit.export.run_export.save_merged", "write"),
    ("merged", "lorakit.export.run_export.reference_answers", "measure"),
    ("gguf", "lorakit.export.run_export.read_back", "measure"),
    ("gguf", "lorakit.export.gguf_file.gguf_tensors", "convert"),
    ("gguf", "lorakit.export.gguf_file.encode_tensor", "quantize"),
    ("gguf", "lorakit.export.gguf_tensors._float32_data", "convert"),
    ("gguf", "gguf.GGUFWriter.write_tensor_data", "write"),
    ("ollama", "lorakit.export.run_export.turn_format", "convert"),
    ("adapter", "shutil.copy2", "write"),
]


@pytest.mark.parametrize("format, target, step", FAULTS, ids=[f"{f}-{s}-{t.rsplit('.', 1)[-1]}" for f, t, s in FAULTS])
def test_failure_in_each_step_is_named_and_leaves_nothing(format, target, step, run_dir, monkeypatch):
    before = tree_fingerprint(run_dir)
    monkeypatch.setattr(target, _boom)
    request = ExportRequest(format, fidelity=step == "measure")  # the fidelity check only where it is under test
    with pytest.raises(ExportError) as failure:
        export_run(run_dir, request)
    assert failure.value.step == step
    assert failure.value.message == f"export failed at step '{step}': RuntimeError: injected fault"
    assert tree_fingerprint(run_dir) == before  # no export/ folder, no staging leftovers
    monkeypatch.undo()
    assert export_run(run_dir, request).output.is_dir()  # simply re-run


def test_cli_names_the_failed_step(run_dir, monkeypatch, capsys):
    monkeypatch.setattr("lorakit.export.run_export.merge_run", _boom)
    assert run_cli(["export", str(run_dir), "--format", "merged"]) == 3
    err = capsys.readouterr().err
    assert "export failed at step 'merge': RuntimeError: injected fault" in err and "Traceback" not in err


def test_overwrite_is_refused_without_the_flag(run_dir, capsys):
    assert run_cli(["export", str(run_dir), "--format", "adapter"]) == 0
    output = run_dir / "export" / "adapter"
    marker = output / "mine.txt"
    marker.write_text("keep")
    assert run_cli(["export", str(run_dir), "--format", "adapter"]) == OutputExistsError.exit_code == 2
    assert f"{output} already exists; the export was not started." in capsys.readouterr().err
    assert marker.read_text() == "keep"
    assert run_cli(["export", str(run_dir), "--format", "adapter", "--overwrite"]) == 0
    assert not marker.exists() and (output / "adapter_model.safetensors").is_file()
    assert not [p for p in output.parent.iterdir() if p.name.startswith(".")]


def test_too_little_disk_is_refused_before_anything_is_written(run_dir, monkeypatch, capsys):
    before = tree_fingerprint(run_dir)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 * 2**20, 9 * 2**20, 2**20))
    with pytest.raises(DiskFullError, match=r"needs about 0\.\d\d GiB and .* has 0\.00 GiB free\. Nothing was written"):
        export_run(run_dir, ExportRequest("gguf"))
    assert run_cli(["export", str(run_dir), "--format", "merged"]) == 3
    assert "Not enough free disk space for this export" in capsys.readouterr().err
    assert tree_fingerprint(run_dir) == before


def test_quant_with_a_format_without_weights_is_a_usage_error(run_dir, capsys):
    assert run_cli(["export", str(run_dir), "--format", "merged", "--quant", "q8_0"]) == 2
    assert "--quant applies to --format gguf or ollama, not merged" in capsys.readouterr().err
    assert run_cli(["export", str(run_dir), "--format", "onnx"]) == 2
    assert "--format: 'onnx' is not one of merged, gguf, ollama, adapter" in capsys.readouterr().err


def test_adapter_export_has_a_real_card(run_dir):
    final_card = (run_dir / "final" / "README.md").read_text()
    assert "[More Information Needed]" not in final_card
    result = export_run(run_dir, ExportRequest("adapter"))
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md", "manifest.json"} <= set(result.files)
    card = (result.output / "README.md").read_text()
    for expected in ("## Base model", "## Training data", "LoRA: r=4, alpha=8", "## Intended use", "## Limits",
                     "Not medical advice.", "No `lorakit eval` results"):
        assert expected in card


@pytest.mark.parametrize("where", ["the run", "its parent", "the working directory"])
def test_output_that_is_or_holds_the_run_is_refused_and_nothing_is_deleted(where, run_dir, monkeypatch, capsys):
    (run_dir / "checkpoints" / "step-2").mkdir(parents=True)
    (run_dir / "checkpoints" / "step-2" / "adapter_model.safetensors").write_bytes(b"weights")
    before = tree_fingerprint(run_dir.parent)
    monkeypatch.chdir(run_dir.parent)
    output = {"the run": str(run_dir), "its parent": str(run_dir.parent), "the working directory": "."}[where]
    assert run_cli(["export", str(run_dir), "--format", "adapter", "--output", output, "--overwrite"]) == 2
    assert (f"error: lorakit export: 1 config problem:\n  - --output: {output} is or contains the run folder "
            f"{run_dir}, which the export would replace (checkpoints, adapter and metrics included); pick another "
            f"folder, e.g. the default {run_dir / 'export' / 'adapter'}\n") in capsys.readouterr().err
    assert tree_fingerprint(run_dir.parent) == before  # the run, its checkpoints and final/ are all still there
