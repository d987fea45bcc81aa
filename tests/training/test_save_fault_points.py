"""Issue 22, fault matrix row 1: a run killed at each named point of a save (a checkpoint staged but not renamed,
mid-pruning, final/ staged but not renamed) keeps its newest verified checkpoint and resumes
to the uninterrupted run's adapter, bit for bit, with metrics for steps 1..N exactly once; pruning deletes an
older checkpoint only after the new one reads back as written."""

from __future__ import annotations

import os
import shutil
import types

import pytest
import torch

from conftest import final_adapter, metric_records, tiny_run_config
from lorakit.errors import CheckpointError
from lorakit.runtime import atomic_files
from lorakit.run import checkpoints as checkpoint
from lorakit.run.checkpoints import list_checkpoints, verify_checkpoint
from lorakit.training.loop import train
from simulated_crash import SimulatedCrash

MAX_STEPS = 3


def _config(model_dir, data, run_dir):
    return tiny_run_config(model_dir, data, run_dir, max_steps=MAX_STEPS, save_steps=1, save_total_limit=1,
                           eval_steps=2)


@pytest.fixture(scope="module")
def uninterrupted(tiny_llama_dir, tmp_path_factory):
    from conftest import write_qa_jsonl

    root = tmp_path_factory.mktemp("straight")
    data = write_qa_jsonl(root / "qa.jsonl")
    train(_config(tiny_llama_dir, data, root / "run"))
    return data, final_adapter(root / "run")


class Killer:
    """Raise SimulatedCrash at the named point of the `nth` call, and from then on let no cleanup run (a killed
    process runs no `except`/`finally` that deletes files)."""

    def __init__(self, monkeypatch, point: str, nth: int = 2):
        self.dead, self.calls = False, 0
        real_rmtree, real_replace = shutil.rmtree, atomic_files._replace_directory
        real_remove = checkpoint.remove_directory

        def rmtree(path, *args, **kwargs):
            if not self.dead:
                real_rmtree(path, *args, **kwargs)

        def replace_directory(staging, target):  # staged, fsynced, not renamed into place
            self._maybe_die("before-rename", target)
            real_replace(staging, target)

        def remove_directory(path):  # mid-pruning: renamed away (.del-*), not yet deleted
            doomed = atomic_files._staging_name(path, "del")
            os.replace(path, doomed)
            self._maybe_die("mid-pruning", path)
            real_rmtree(doomed, ignore_errors=True)

        monkeypatch.setattr(atomic_files, "shutil", types.SimpleNamespace(rmtree=rmtree, disk_usage=shutil.disk_usage))
        monkeypatch.setattr(atomic_files, "_replace_directory", replace_directory)
        monkeypatch.setattr(checkpoint, "remove_directory", remove_directory)
        self.point, self.nth = point, nth

    def _maybe_die(self, point: str, path) -> None:
        name = os.path.basename(str(path)).split(".tmp-")[0].lstrip(".")
        final_save = self.point.startswith("final-")
        if point != self.point.removeprefix("final-") or self.dead or (name == "final") != final_save:
            return
        self.calls += 1
        if self.calls == self.nth:
            self.dead = True
            raise SimulatedCrash(point)


# (Written-but-not-fsynced leaves the same staging folder as fsynced-but-not-renamed, and a kill right after the
# rename the same folders as one after the save; the parent folder's fsync after the rename is tested in
# test_crash_safety.py. Each case trains twice: the suite keeps the three that leave different folders.)
@pytest.mark.parametrize("point", ["before-rename", "mid-pruning", "final-before-rename"])
def test_a_run_killed_at_a_named_save_point_resumes_to_the_uninterrupted_adapter(
        tiny_llama_dir, uninterrupted, tmp_path, monkeypatch, point):
    data, expected = uninterrupted
    config = _config(tiny_llama_dir, data, tmp_path / "run")
    killer = Killer(monkeypatch, point, nth=1 if point.startswith("final-") else 2)
    with pytest.raises(SimulatedCrash):
        train(config)
    assert killer.dead
    monkeypatch.undo()
    good = [c for c in list_checkpoints(tmp_path / "run") if verify_checkpoint(c) is None]
    assert good, "the newest verified checkpoint must survive"
    train(config, resume=True)
    got = final_adapter(tmp_path / "run")
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)
    assert [r["step"] for r in metric_records(tmp_path / "run")] == list(range(1, MAX_STEPS + 1))
    assert not [p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith(".")]


def test_pruning_waits_for_the_new_checkpoint_to_read_back(tiny_llama_dir, uninterrupted, tmp_path, monkeypatch):
    data, _ = uninterrupted
    real_finish = atomic_files._finish_tree

    def finish_tree(root):  # the disk hands back other bytes than were written (bit rot, a lying cache)
        if root.name.startswith(".step-00000002"):
            with open(root / "optimizer.pt", "r+b") as handle:
                handle.write(b"\0")
        real_finish(root)

    monkeypatch.setattr(atomic_files, "_finish_tree", finish_tree)
    with pytest.raises(CheckpointError) as info:
        train(_config(tiny_llama_dir, data, tmp_path / "run"))
    assert info.value.message == ("Checkpoint step-00000002 does not read back as written (optimizer.pt does not match "
                                  "its recorded sha256); the older checkpoints are kept.")
    assert verify_checkpoint(tmp_path / "run" / "checkpoints" / "step-00000001") is None
