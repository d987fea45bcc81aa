"""Issue 22: what a killed export leaves is cleaned by the next one, `train --overwrite` removes the old run's
exports, and export holds the run lock: train + export on one run is a clear lock error, and a lock left by a
killed process is recognised and named."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest
from export.export_runs import tiny_run

from lorakit.cli.app import run_cli
from lorakit.run.layout import LOCK_NAME
from lorakit.run.lock import hold_run_lock
from lorakit.run.folder import prepare_run_dir


@pytest.fixture
def run_dir(tiny_llama_dir, tmp_path_factory, tmp_path):
    return tiny_run(tiny_llama_dir, tmp_path_factory.mktemp("train-llama"), tmp_path / "run")


def _killed_export_staging(folder, name):
    staging = folder / f".{name}.tmp-0badc0de"  # as atomic_directory names it
    staging.mkdir(parents=True)
    (staging / "model-00001-of-00002.safetensors").write_bytes(b"\0" * 4096)
    return staging


def test_the_next_export_removes_a_killed_exports_staging_folder(run_dir, capsys):
    merged = _killed_export_staging(run_dir / "export", "merged")
    assert run_cli(["export", str(run_dir), "--format", "adapter"]) == 0
    assert not merged.exists()
    assert sorted(p.name for p in (run_dir / "export").iterdir()) == ["adapter"]
    err = " ".join(capsys.readouterr().err.split())
    assert f"WARNING Cleaned up after an interrupted write in {run_dir / 'export'}: removed .merged.tmp-0badc0de" in err


def test_an_export_elsewhere_removes_only_its_own_leftovers(run_dir, tmp_path):
    mine, other = _killed_export_staging(tmp_path / "out", "adapter"), _killed_export_staging(tmp_path / "out", "x")
    assert run_cli(["export", str(run_dir), "--format", "adapter", "--output", str(tmp_path / "out" / "adapter")]) == 0
    assert not mine.exists() and other.exists()


def test_train_overwrite_removes_the_old_runs_exports(run_dir):
    assert run_cli(["export", str(run_dir), "--format", "adapter"]) == 0
    _killed_export_staging(run_dir / "export", "merged")
    prepare_run_dir(run_dir, resume=False, overwrite=True)
    assert not (run_dir / "export").exists() and not (run_dir / "final").exists()


def test_export_of_a_run_being_trained_is_a_lock_error(run_dir, tmp_path, capsys):
    with hold_run_lock(run_dir, "training"):
        assert run_cli(["export", str(run_dir), "--format", "adapter"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith(f"error: Another lorakit process (pid {__import__('os').getpid()}) is training in {run_dir}.")
    assert not (run_dir / "export").exists()


def test_a_lock_left_by_a_killed_export_is_recognised_and_named(run_dir, capsys):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from lorakit.run.lock import hold_run_lock
        with hold_run_lock(Path({str(run_dir)!r}), "exporting"):
            print("held", flush=True)
            time.sleep(120)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(Exception, match=rf"Another lorakit process \(pid {holder.pid}\) is exporting from"):
            with hold_run_lock(run_dir):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
    assert (run_dir / LOCK_NAME).read_text() == f"{holder.pid} exporting"  # what a killed holder leaves
    assert run_cli(["export", str(run_dir), "--format", "adapter"]) == 0
    assert (f"WARNING Took over the lock of {run_dir} from pid {holder.pid} (exporting), which ended without "
            "releasing it (killed or crashed)") in " ".join(capsys.readouterr().err.split())
    assert (run_dir / LOCK_NAME).read_text() == ""  # released normally: nothing stale left
