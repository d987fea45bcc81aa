"""Issue 4, point 3: a full disk while saving gives a clear error and leaves the previous checkpoint intact
(injected ENOSPC mid-write, and a real, small tmpfs filled during the run)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import final_adapter, tiny_run_config, write_config_file
from lorakit.cli.app import run_cli
from lorakit.errors import DiskFullError
from lorakit.runtime.atomic_files import is_disk_full
from lorakit.run.checkpoints import list_checkpoints, verify_checkpoint
from lorakit.training.loop import train
from lorakit.training.metrics import SilentReporter


def _config_file(tmp_path: Path, model_dir: Path) -> Path:
    return write_config_file(tmp_path, model_dir, seed=5, training={
        "batch_size": 2, "max_steps": 6, "learning_rate": 0.01, "logging_steps": 1, "eval_steps": 3, "save_steps": 2,
        "save_total_limit": 3})


def _half_write_then_enospc(monkeypatch, fail_in: str) -> list[Path]:
    """Path.write_bytes into a staging folder named `fail_in` writes half the bytes, then fails as a full disk would."""
    failed: list[Path] = []
    real_write_bytes = Path.write_bytes

    def write_bytes(self: Path, data: bytes) -> int:
        if fail_in in self.parent.name and self.name == "optimizer.pt":
            real_write_bytes(self, data[: len(data) // 2])
            failed.append(self)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real_write_bytes(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    return failed


def test_disk_full_injected_enospc_is_a_clear_error_and_the_previous_checkpoint_survives(
    tiny_llama_dir, tmp_path, monkeypatch, capsys
):
    config = _config_file(tmp_path, tiny_llama_dir)
    failed = _half_write_then_enospc(monkeypatch, ".step-00000004.tmp-")
    assert run_cli(["train", str(config)]) == 3
    err = capsys.readouterr().err
    assert failed, "the injected failure never ran"
    assert "error: Could not save checkpoint step-00000004: The disk is full: writing" in err
    assert "No space left on device" in err and "The previous checkpoint step-00000002 is intact." in err
    assert "hint: Free space (or move output_dir to a larger disk), then continue with `lorakit train CONFIG --resume`" in err
    assert "Traceback" not in err

    run = tmp_path / "run"
    assert [p.name for p in list_checkpoints(run)] == ["step-00000002"]
    assert verify_checkpoint(run / "checkpoints" / "step-00000002") is None
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000002"]  # staging removed
    assert not (run / "final").exists()

    monkeypatch.undo()
    assert run_cli(["train", str(config), "--resume"]) == 0
    assert "resumed from step-00000002 (step 2)" in capsys.readouterr().err
    straight = tmp_path / "straight"
    straight.mkdir()
    assert run_cli(["train", str(_config_file(straight, tiny_llama_dir))]) == 0
    a = final_adapter(run)
    b = final_adapter(straight / "run")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_disk_full_while_writing_the_final_adapter_keeps_the_last_checkpoint(tiny_llama_dir, tmp_path, monkeypatch, capsys):
    from lorakit.runtime import atomic_files

    config = _config_file(tmp_path, tiny_llama_dir)
    real_finish_tree = atomic_files._finish_tree

    def finish_tree(root: Path) -> None:  # fsync is where delayed allocation reports ENOSPC
        if root.name.startswith(".final.tmp-"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_finish_tree(root)

    monkeypatch.setattr(atomic_files, "_finish_tree", finish_tree)
    assert run_cli(["train", str(config)]) == 3
    err = capsys.readouterr().err
    assert f"error: The disk is full: writing {tmp_path / 'run' / 'final'} failed" in err and "Traceback" not in err
    assert verify_checkpoint(tmp_path / "run" / "checkpoints" / "step-00000006") is None
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".final")) == []
    assert not (tmp_path / "run" / "final").exists()

    monkeypatch.undo()
    assert run_cli(["train", str(config), "--resume"]) == 0  # no steps left: only the final adapter is written
    assert (tmp_path / "run" / "final" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize(
    "exc",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EDQUOT, "Disk quota exceeded"),
        OSError(errno.EFBIG, "File too large"),
        Exception("Error while serializing: I/O error: No space left on device (os error 28)"),  # safetensors
    ],
)
def test_disk_full_is_recognised_from_every_writer(exc):
    assert is_disk_full(exc)


def test_disk_full_other_errors_are_not_disguised_as_disk_full():
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(RuntimeError("unexpected pos 576 vs 534"))


@pytest.fixture
def small_filesystem(tmp_path):
    """A real 4 MiB tmpfs (needs root and mount permission; skipped elsewhere)."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


class FillDiskAtStep(SilentReporter):
    """Fills the filesystem after a checkpoint was saved, leaving room for logs but not for the next checkpoint."""

    def __init__(self, step: int, filler: Path, leave_bytes: int):
        self.fill_step, self.filler, self.leave_bytes = step, filler, leave_bytes

    def step(self, step: int, metrics: dict) -> None:
        if step == self.fill_step:
            stats = os.statvfs(self.filler.parent)
            self.filler.write_bytes(b"\0" * max(stats.f_bavail * stats.f_frsize - self.leave_bytes, 0))


def test_disk_full_on_a_real_small_filesystem(tiny_llama_dir, qa_file, tmp_path, small_filesystem):
    settings = dict(max_steps=6, save_steps=2, save_total_limit=3)
    config = tiny_run_config(tiny_llama_dir, qa_file, small_filesystem / "run", **settings)
    filler = small_filesystem / "filler"
    with pytest.raises(DiskFullError) as info:
        train(config, reporter=FillDiskAtStep(3, filler, leave_bytes=48 * 1024))
    message = str(info.value)
    assert message.startswith("Could not save checkpoint step-00000004: The disk is full") or "could not log step" in message
    run = small_filesystem / "run"
    assert [p.name for p in list_checkpoints(run)] == ["step-00000002"]
    assert verify_checkpoint(run / "checkpoints" / "step-00000002") is None
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]  # no half-written staging

    filler.unlink()
    train(config, resume=True)
    straight = train(tiny_run_config(tiny_llama_dir, qa_file, tmp_path / "straight", **settings))
    a = final_adapter(run)
    b = load_file(straight.adapter_dir / "adapter_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_disk_full_pre_flight_refuses_a_run_whose_checkpoints_cannot_fit(tiny_llama_dir, qa_file, tmp_path, monkeypatch):
    """Issue 22: the space for save_total_limit checkpoints (+1 staged, + final/) is checked before step 1."""
    from lorakit.run import folder as run_dir_module

    real = shutil.disk_usage
    monkeypatch.setattr(run_dir_module.shutil, "disk_usage", lambda path: real(path)._replace(free=100 << 10))
    with pytest.raises(DiskFullError) as info:
        train(tiny_run_config(tiny_llama_dir, qa_file, tmp_path / "run", save_total_limit=3))
    message = info.value.message
    assert message.startswith(f"Not enough free disk space for 3 checkpoints and the final adapter in {tmp_path / 'run'}: "
                              "they need about 1.")  # 4 x (3 x the LoRA bytes + 256 KiB) + the LoRA bytes
    assert message.endswith(" MiB and 0.1 MiB are free. Nothing was trained.")
    assert info.value.hint == "Free some space, lower training.save_total_limit, or set output_dir on a larger disk."
    assert list_checkpoints(tmp_path / "run") == [] and not (tmp_path / "run" / "metrics.jsonl").exists()
