"""Issue 22, fault matrix row 1: a real SIGKILL inside the merge and GGUF writers (not an injected exception,
which runs the cleanup a kill skips). The kill leaves its hidden staging folder in RUN/export; the next export
of the same format removes it and succeeds, and nothing hidden is left. (--skip-fidelity: the comparison runs
after the writers and costs seconds.)"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from export.export_runs import tiny_run
from lorakit.cli.app import run_cli

KILLER = Path(__file__).with_name("kill_inside_writer.py")


@pytest.fixture(scope="module")
def killed(tiny_llama_dir, tmp_path_factory):
    """Both kills at once (each is mostly interpreter start-up): {point: (run_dir, completed process)}."""
    runs = {point: tiny_run(tiny_llama_dir, tmp_path_factory.mktemp("train"), tmp_path_factory.mktemp(point) / "run")
            for point in ("merge", "gguf")}
    formats = {"merge": "merged", "gguf": "gguf"}
    started = {point: subprocess.Popen([sys.executable, str(KILLER), point, "export", str(run), "--format",
                                        formats[point], "--skip-fidelity"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for point, run in runs.items()}
    return {point: (runs[point], process, *process.communicate(timeout=300)) for point, process in started.items()}


@pytest.mark.parametrize(("point", "export_format", "output_file"), [
    ("merge", "merged", "model.safetensors"), ("gguf", "gguf", "run-f16.gguf")])
def test_an_export_killed_inside_its_writer_is_rerun_cleanly(killed, point, export_format, output_file):
    run_dir, process, out, err = killed[point]
    assert process.returncode == -signal.SIGKILL, err
    export = run_dir / "export"
    leftovers = [p.name for p in export.iterdir() if p.name.startswith(".")]
    assert leftovers and all(".tmp-" in name for name in leftovers), sorted(p.name for p in export.iterdir())
    assert run_cli(["export", str(run_dir), "--format", export_format, "--skip-fidelity"]) == 0
    assert sorted(p.name for p in export.iterdir()) == [export_format]
    assert (export / export_format / output_file).is_file()
