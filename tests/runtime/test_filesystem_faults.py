"""Issue 22, fault matrix row 7: a read-only output folder, and a TMPDIR on another filesystem (where a rename
across filesystems fails with EXDEV). Tests run as root here, which chmod does not stop, and cannot mount a
filesystem: the kernel's answers are injected at the system calls (os.mkdir, os.open, os.rename, os.replace),
for paths under the folder that plays the other mount."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from conftest import write_config_file
from evaluation.eval_runs import trained_tiny_run
from lorakit.cli.app import run_cli

HINT = ("hint: check the path: its folders must be folders (not files) you may write to, and an output file "
        "cannot replace a folder\n")
_WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _read_only(monkeypatch, folder: Path) -> None:
    """Every write under `folder` fails as on a read-only mount (EROFS); reads still work."""
    mkdir, open_ = os.mkdir, os.open

    def under(path) -> bool:
        return Path(os.fspath(path)).absolute().is_relative_to(folder)

    def refused(path):
        return OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))

    def read_only_mkdir(path, *args, **kwargs):
        if under(path):
            raise refused(path)
        return mkdir(path, *args, **kwargs)

    def read_only_open(path, flags, *args, **kwargs):
        if flags & _WRITING and under(path):
            raise refused(path)
        return open_(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", read_only_mkdir)
    monkeypatch.setattr(os, "open", read_only_open)


def test_train_into_a_read_only_folder_is_one_message_and_writes_nothing(tmp_path, tiny_llama_dir, monkeypatch,
                                                                           capsys):
    config = write_config_file(tmp_path, tiny_llama_dir, seed=0, training={"max_steps": 2, "batch_size": 2},
                               output_dir=str(tmp_path / "ro" / "run"))
    (tmp_path / "ro").mkdir()
    _read_only(monkeypatch, tmp_path / "ro")
    assert run_cli(["train", str(config)]) == 2
    assert capsys.readouterr().err == ("error: output_dir: 1 config problem:\n  - output_dir: cannot create the folder "
                                       f"{tmp_path / 'ro' / 'run'} (Read-only file system)\n")
    assert list((tmp_path / "ro").iterdir()) == []


def test_export_into_a_read_only_folder_is_one_message_and_writes_nothing(tmp_path_factory, tiny_llama_dir,
                                                                            tmp_path, monkeypatch, capsys):
    run_dir = trained_tiny_run(tiny_llama_dir, tmp_path_factory.mktemp("ro-export"))
    (tmp_path / "ro").mkdir()
    _read_only(monkeypatch, tmp_path / "ro")
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    assert run_cli(["export", str(run_dir), "--format", "adapter", "--output", str(tmp_path / "ro" / "a")]) == 2
    err = capsys.readouterr().err
    # (the path named is the export's staging folder, a hidden sibling of the output, in the read-only folder)
    assert err.endswith(": Read-only file system\n" + HINT) and f"error: {tmp_path / 'ro'}/.a.tmp-" in err
    assert list((tmp_path / "ro").iterdir()) == [] and sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before


def test_nothing_is_renamed_across_filesystems_with_tmpdir_on_another_one(tmp_path_factory, tiny_llama_dir,
                                                                           tmp_path, monkeypatch):
    """Every staging file or folder is a sibling of its target, so a TMPDIR elsewhere never meets a rename."""
    run_dir = trained_tiny_run(tiny_llama_dir, tmp_path_factory.mktemp("exdev"))
    other = tmp_path / "other-filesystem"
    other.mkdir()
    monkeypatch.setenv("TMPDIR", str(other))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    renames = []

    def across(real):
        def rename(source, target, *args, **kwargs):
            renames.append((Path(source), Path(target)))
            if Path(source).absolute().is_relative_to(other) != Path(target).absolute().is_relative_to(other):
                raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), os.fspath(source), None, os.fspath(target))
            return real(source, target, *args, **kwargs)
        return rename

    monkeypatch.setattr(os, "rename", across(os.rename))
    monkeypatch.setattr(os, "replace", across(os.replace))
    assert run_cli(["export", str(run_dir), "--format", "adapter", "--output", str(tmp_path / "adapter")]) == 0
    assert renames and all(source.parent == target.parent for source, target in renames)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file() and list(other.iterdir()) == []
