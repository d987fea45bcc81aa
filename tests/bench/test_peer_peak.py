"""bench/lib/peer_peak.py (issues 23 and 24, "at no higher peak"): the row lorakit-at-peer-peak is capped at the
PyTorch peak reserved of the TRL row of its own setting in this run, and is skipped without one; both benchmark
scripts pass that cap, not the 8 GB card's, to capped_run.py."""

from __future__ import annotations

import doctest
import sys
from argparse import Namespace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import peer_speed  # noqa: E402
import preference_speed  # noqa: E402
from lib import peer_peak  # noqa: E402
from lib.peer_peak import peer_peak_cap  # noqa: E402

GIB = 2**30
ROWS = [
    {"setting": "8gb-qlora-512", "tool": "TRL best practice", "peak_reserved": int(6.01 * GIB)},
    {"setting": "8gb-qlora-512", "tool": "lorakit", "peak_reserved": int(6.17 * GIB)},
    {"setting": "8gb-qlora-2048", "tool": "TRL best practice", "peak_reserved": 5 * GIB},
    {"setting": "gpu-qlora-512", "tool": "TRL best practice", "peak_reserved": 28 * GIB},
]


def test_docstring_examples():
    result = doctest.testmod(peer_peak)
    assert result.attempted > 0 and result.failed == 0


def test_cap_is_the_trl_row_peak_reserved_of_the_same_setting():
    cap = peer_peak_cap(ROWS, "8gb-qlora-512", "TRL best practice")
    assert cap.cap_gib == int(6.01 * GIB) / GIB and not cap.skip
    assert cap.label == ("lorakit capped at TRL best practice peak 6.01 GiB (TRL best practice row of 8gb-qlora-512, "
                         "this run: PyTorch peak reserved)")
    assert peer_peak_cap(ROWS, "8gb-qlora-2048", "TRL best practice").cap_gib == 5.0


def test_the_latest_trl_row_of_the_setting_counts():
    rerun = ROWS + [{"setting": "8gb-qlora-512", "tool": "TRL best practice", "peak_reserved": 7 * GIB}]
    assert peer_peak_cap(rerun, "8gb-qlora-512", "TRL best practice").cap_gib == 7.0


@pytest.mark.parametrize("rows, reason", [
    ([], "no TRL best practice row of 8gb-qlora-512 in this run: no peak to cap at"),
    (ROWS[1:], "no TRL best practice row of 8gb-qlora-512 in this run: no peak to cap at"),
    ([{"setting": "8gb-qlora-512", "tool": "TRL best practice", "error": "CUDA out of memory"}],
     "the TRL best practice row of 8gb-qlora-512 did not run to the end: no peak to cap at"),
    ([{"setting": "8gb-qlora-512", "tool": "TRL best practice", "peak_reserved": None}],
     "the TRL best practice row of 8gb-qlora-512 recorded no peak_reserved: no peak to cap at"),
])
def test_missing_or_failed_trl_row_skips(rows, reason):
    cap = peer_peak_cap(rows, "8gb-qlora-512", "TRL best practice")
    assert cap.skip == reason and cap.cap_gib is None


def test_smoke_runs_uncapped_and_says_so():
    rows = [{"setting": "8gb-qlora", "tool": "TRL", "peak_reserved": None}]
    cap = peer_peak_cap(rows, "8gb-qlora", "TRL", smoke=True)
    assert (cap.cap_gib, cap.skip) == (None, "")
    assert cap.label == "lorakit capped at TRL peak (smoke on CPU: uncapped, no CUDA allocator to cap)"


def _command_of(module, setting, call, monkeypatch, tmp_path) -> list[str]:
    """The capped_run.py command a lorakit row runs (the run itself stubbed out as a timeout)."""
    commands = []
    monkeypatch.setattr(module, "_run", lambda command, *rest: (commands.append(command), (None, {}))[1])
    row = call(Namespace(smoke=False, cap_gib=7.25, row_timeout=1, warmup=0, steps=1), tmp_path)
    assert row["error"] == "timeout"
    return commands[0]


@pytest.mark.parametrize("module, setting, trl, run_dir", [
    (peer_speed, "8gb-qlora-512", "TRL best practice", "lorakit-8gb-qlora-512-at-peer-peak"),
    (preference_speed, "8gb-qlora", preference_speed.TRL, "lorakit-at-peer-peak-8gb-qlora")])
def test_scripts_pass_the_peer_cap_to_capped_run(module, setting, trl, run_dir, monkeypatch, tmp_path):
    cap = peer_peak_cap([{"setting": setting, "tool": trl, "peak_reserved": 6 * GIB}], setting, trl)

    def call(args, work):
        if module is peer_speed:
            return module.lorakit_row(setting, work, work / "config.yaml", args, None, peer_cap=cap)
        return module.lorakit_row(setting, work, work / "config.yaml", args, None, module.PEER_PEAK_TOOL, cap)

    command = _command_of(module, setting, call, monkeypatch, tmp_path)
    assert command[command.index("--cap-gib") + 1] == "6.0"
    assert f"output_dir={tmp_path / run_dir}" in command  # its own run folder, beside the plain row's

    def plain(args, work):
        return module.lorakit_row(setting, work, work / "config.yaml", args, None)

    plain_command = _command_of(module, setting, plain, monkeypatch, tmp_path)
    assert plain_command[plain_command.index("--cap-gib") + 1] == "7.25"  # the existing row keeps the 8 GB card


def test_both_scripts_decide_the_row_from_the_rows_file(tmp_path, capsys):
    """peer_cap_or_skip, the one decision both scripts call: uncapped settings never run it, a missing TRL row appends
    a `skipped` row naming why, a TRL row's peak reserved becomes the cap."""
    import json

    rows = tmp_path / "rows.jsonl"
    assert peer_peak.peer_cap_or_skip(rows, "gpu", False, "TRL", smoke=False) is None
    assert "gpu: not run (only for the capped settings)" in capsys.readouterr().out and not rows.exists()
    assert peer_peak.peer_cap_or_skip(rows, "8gb", True, "TRL", smoke=False) is None
    skipped = json.loads(rows.read_text())
    assert skipped["setting"] == "8gb" and "no TRL row of 8gb in this run" in json.dumps(skipped)
    rows.write_text(json.dumps({"setting": "8gb", "tool": "TRL", "peak_reserved": 6 * 2**30}) + "\n")
    assert peer_peak.peer_cap_or_skip(rows, "8gb", True, "TRL", smoke=False).cap_gib == 6.0
