"""`lorakit export` passes --dtype and --skip-fidelity on, refuses --dtype for GGUF, and prints the fidelity the
export measured with a warning below its threshold (issue 25); export_run is patched (no model is loaded)."""

from __future__ import annotations

from pathlib import Path

from lorakit.cli.app import run_cli
from lorakit.export.fidelity import Fidelity
from lorakit.export.run_export import ExportResult


def test_export_cli_passes_options_and_prints_fidelity_and_its_warning(tmp_path, monkeypatch, capsys):
    requests = []
    fidelity = Fidelity(4, "test questions", 128, 2.5, 0.4, 0.9, 0.99)

    def fake_export_run(run_dir, request, on_step):
        requests.append(request)
        return ExportResult(Path(tmp_path), ["README.md"], [], fidelity.to_json())

    monkeypatch.setattr("lorakit.export.run_export.export_run", fake_export_run)
    assert run_cli(["export", str(tmp_path), "--format", "merged", "--dtype", "fp32", "--skip-fidelity"]) == 0
    assert (requests[0].dtype, requests[0].fidelity) == ("fp32", False)
    out = " ".join(capsys.readouterr().out.split())
    assert ("fidelity: 90.0% greedy token agreement with the run (threshold 99%); logit difference max 2.500, "
            "mean 0.400; 128 answer tokens of 4 test questions") in out
    assert f"warning: {fidelity.warning}" in out and "the eval and safety numbers do not describe it" in out
    assert run_cli(["export", str(tmp_path), "--format", "gguf", "--dtype", "fp16"]) != 0
    assert len(requests) == 1
