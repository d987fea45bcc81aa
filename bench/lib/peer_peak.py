"""The row "lorakit at the peer's peak" (issues 23 and 24 ask for the speed "at no higher peak"): lorakit run again
with PyTorch's allocator capped at what the peer (TRL) reserved in the same setting of the same run.

On the emulated 8 GB card lorakit's planner spends the whole cap (7.25 GiB) on speed (fewer checkpointed layers),
so it peaks a little above TRL, which checkpoints every layer and leaves memory unused. Capping lorakit at TRL's
own measured `peak_reserved` makes its planner plan for that budget, and the row's peaks can then not exceed
TRL's (PyTorch's reserved bytes are capped; nvidia-smi adds the same CUDA context to both).
"""

from __future__ import annotations

from dataclasses import dataclass

PEER_PEAK_TOOL = "lorakit-at-peer-peak"  # the --tools name of the row in bench/peer_speed.py and preference_speed.py


@dataclass(frozen=True)
class PeerPeakCap:
    """What the row runs at: `cap_gib` GiB (None: uncapped, or not run when `skip` is set), and its table label."""

    label: str
    cap_gib: float | None = None
    skip: str = ""  # why the row is not run (no peer peak to cap at); empty when it runs


def peer_peak_cap(rows: list[dict], setting: str, peer_tool: str, smoke: bool = False) -> PeerPeakCap:
    """The cap of the row for `setting`: the `peak_reserved` bytes of the last row of `peer_tool` in `setting`
    among `rows` (the rows measured so far in this run), in GiB. A missing or failed peer row, or one without a
    peak, skips the row. `smoke` (CPU: no allocator to cap) runs uncapped once the peer row succeeded, and says so.

    >>> rows = [{"setting": "8gb", "tool": "TRL", "peak_reserved": 6 * 2**30},
    ...         {"setting": "gpu", "tool": "TRL", "peak_reserved": 28 * 2**30}]
    >>> peer_peak_cap(rows, "8gb", "TRL").cap_gib
    6.0
    >>> peer_peak_cap(rows, "8gb", "TRL").label
    'lorakit capped at TRL peak 6.00 GiB (TRL row of 8gb, this run: PyTorch peak reserved)'
    >>> peer_peak_cap([], "8gb", "TRL").skip
    'no TRL row of 8gb in this run: no peak to cap at'
    """
    peer = next((row for row in reversed(rows) if row["setting"] == setting and row["tool"] == peer_tool), None)
    name = f"lorakit capped at {peer_tool} peak"
    if peer is None:
        return PeerPeakCap(name, skip=f"no {peer_tool} row of {setting} in this run: no peak to cap at")
    if "error" in peer or "skipped" in peer:
        return PeerPeakCap(name, skip=f"the {peer_tool} row of {setting} did not run to the end: no peak to cap at")
    if smoke:
        return PeerPeakCap(f"{name} (smoke on CPU: uncapped, no CUDA allocator to cap)")
    if peer.get("peak_reserved") is None:
        return PeerPeakCap(name, skip=f"the {peer_tool} row of {setting} recorded no peak_reserved: no peak to cap at")
    cap_gib = peer["peak_reserved"] / 2**30
    return PeerPeakCap(f"{name} {cap_gib:.2f} GiB ({peer_tool} row of {setting}, this run: PyTorch peak reserved)",
                       cap_gib)


def skipped_row(setting: str, cap: PeerPeakCap) -> dict:
    """The rows.jsonl entry of a skipped row: the table shows it as skipped, with the reason."""
    return {"setting": setting, "tool": cap.label, "skipped": cap.skip}


def peer_cap_or_skip(rows_path, setting: str, capped: bool, peer_tool: str, smoke: bool) -> PeerPeakCap | None:
    """The peer-peak cap for `setting` from the rows already written to `rows_path`, or None when the row is not
    run: an uncapped setting (said on stdout), or no usable peer row (said, and a `skipped` row appended)."""
    import json

    if not capped:
        print(f"{PEER_PEAK_TOOL} {setting}: not run (only for the capped settings)", flush=True)
        return None
    measured = [json.loads(line) for line in rows_path.read_text().splitlines()] if rows_path.exists() else []
    cap = peer_peak_cap(measured, setting, peer_tool, smoke=smoke)
    if cap.skip:
        print(f"{PEER_PEAK_TOOL} {setting}: skipped, {cap.skip}", flush=True)
        with open(rows_path, "a") as handle:
            handle.write(json.dumps(skipped_row(setting, cap)) + "\n")
        return None
    return cap
