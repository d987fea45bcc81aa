"""Background jobs (train, eval, export) as processes of their own, with all their state in the run folder.

A job is `lorakit ...` run by job_runner.py in a new session (it outlives the studio's request, the browser tab
and the studio itself). Its files, next to the run's own:
  studio-JOB.pid   the process id (written at start)       studio-JOB.log   its stdout and stderr
  studio-JOB.exit  its exit code (written when it ends)
so the job's status is read from the run folder alone, by any tab and by a restarted studio.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from lorakit.errors import LorakitError

__all__ = ["JOBS", "JobStatus", "exit_file", "log_file", "job_status", "start_job", "stop_job"]

JOBS = ("train", "eval", "export")
_TAIL_BYTES = 6000
_children: dict[int, subprocess.Popen] = {}  # reaped here so that a finished child is not left a zombie


def _file(run_dir: Path, job: str, suffix: str) -> Path:
    assert job in JOBS, job
    return run_dir / f"studio-{job}.{suffix}"


def exit_file(run_dir: Path, job: str) -> Path:
    return _file(run_dir, job, "exit")


def log_file(run_dir: Path, job: str) -> Path:
    return _file(run_dir, job, "log")


@dataclass(frozen=True)
class JobStatus:
    """state: none (never started), running, succeeded, stopped (Ctrl-C, exit 130), failed, or died (killed
    without an exit code). `error`/`hint` are the CLI's own `error:`/`hint:` lines from the log."""

    job: str
    state: str
    pid: int | None
    exit_code: int | None
    started: float | None
    log_tail: str
    error: str | None
    hint: str | None

    def to_json(self) -> dict:
        return asdict(self)


def _alive(pid: int) -> bool:
    child = _children.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat, cmdline = Path(f"/proc/{pid}/stat"), Path(f"/proc/{pid}/cmdline")
    if stat.is_file() and stat.read_text().split(") ")[-1].startswith("Z"):
        return False  # finished, not yet reaped by the studio that started it
    # A pid file from long ago may name a pid that the system has since given to another program.
    return not cmdline.is_file() or b"lorakit.studio.job_runner" in cmdline.read_bytes()


def _tail(path: Path) -> str:
    if not path.is_file():
        return ""
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - _TAIL_BYTES))
        return handle.read().decode("utf-8", errors="replace")


def _cli_error(tail: str) -> tuple[str | None, str | None]:
    """The last `error: ...` (with its continuation lines) and `hint: ...` the CLI printed."""
    lines = tail.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    if not starts:
        return None, None
    error, hint, target = [lines[starts[-1]].removeprefix("error: ")], [], None
    for line in lines[starts[-1] + 1:]:
        if line.startswith("hint: "):
            target = hint
            hint.append(line.removeprefix("hint: "))
        elif line.startswith("  ") or target is not None:
            (target if target is not None else error).append(line)
        else:
            break
    return "\n".join(error), "\n".join(hint) or None


def job_status(run_dir: Path, job: str) -> JobStatus:
    pid_path, exit_path = _file(run_dir, job, "pid"), exit_file(run_dir, job)
    if not pid_path.is_file():
        return JobStatus(job, "none", None, None, None, "", None, None)
    pid, started = int(pid_path.read_text().split()[0]), pid_path.stat().st_mtime
    tail = _tail(log_file(run_dir, job))
    code = int(exit_path.read_text()) if exit_path.is_file() else None
    if code is None:
        state = "running" if _alive(pid) else "died"
    else:
        state = {0: "succeeded", 130: "stopped"}.get(code, "failed")
    error, hint = _cli_error(tail) if state in ("failed", "died") else (None, None)
    return JobStatus(job, state, pid, code, started, tail, error, hint)


def start_job(run_dir: Path, job: str, args: list[str]) -> JobStatus:
    """Start `lorakit ARGS` as job `job` of the run; refused while that job is still running."""
    current = job_status(run_dir, job)
    if current.state == "running":
        raise LorakitError(f"The {job} job of {run_dir.name} is already running (pid {current.pid}).",
                           hint="Wait for it to finish, or stop it first.")
    exit_file(run_dir, job).unlink(missing_ok=True)
    command = [sys.executable, "-m", "lorakit.studio.job_runner", str(run_dir), job, "--", *args]
    with open(log_file(run_dir, job), "wb") as log:
        log.write(("$ lorakit " + " ".join(args) + "\n").encode())
        log.flush()
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    _children[child.pid] = child
    _file(run_dir, job, "pid").write_text(f"{child.pid}\n")
    return job_status(run_dir, job)


SIGINT_REPEAT_S = 5.0


def stop_job(run_dir: Path, job: str, timeout_s: float = 0.0) -> JobStatus:
    """Ctrl-C for the job (SIGINT to its process group): `lorakit train` saves nothing new, prints the
    `--resume` command and exits 130. Waits up to `timeout_s` for it to end, repeating the Ctrl-C every
    SIGINT_REPEAT_S as one would at a terminal: once, in a loaded CI run, a job went on training for 60 s after a
    single SIGINT (cause not found; not reproduced in 7 reruns)."""
    status = job_status(run_dir, job)
    if status.state != "running":
        raise LorakitError(f"The {job} job of {run_dir.name} is not running ({status.state}).")
    pid, now = status.pid, time.monotonic()
    deadline, next_sigint = now + timeout_s, now
    while True:
        if time.monotonic() >= next_sigint:
            try:
                os.killpg(pid, signal.SIGINT)
            except ProcessLookupError:
                pass
            next_sigint = time.monotonic() + SIGINT_REPEAT_S
        status = job_status(run_dir, job)
        if status.state != "running" or time.monotonic() >= deadline:
            return status
        time.sleep(0.1)
