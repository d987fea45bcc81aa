"""`python -m lorakit.studio.job_runner RUN_DIR JOB -- ARGS...`: run one `lorakit ARGS...` command line for the
studio and record its exit code in RUN_DIR/studio-JOB.exit, so that the page can tell how a job ended even
after the studio itself was restarted.

The command is the CLI itself (`python -m lorakit ARGS...`, a child process): same messages, same progress, same
codes, and the studio does not import the CLI, which sits above it. The child shares this process's group, so the
page's stop button (SIGINT to the group) reaches it directly; this process waits for it to end, however often
SIGINT comes, and records its code. A child killed by a signal leaves no exit file: the job then reads as "died",
as it did when the command ran inside this process; and on Linux a child whose runner is killed is killed too
(PR_SET_PDEATHSIG), so that a job that reads as "died" is not still training."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def main(argv: list[str]) -> int:
    run_dir, job, separator, *command = argv
    assert separator == "--", "usage: job_runner RUN_DIR JOB -- ARGS..."
    # The page's stop button is a SIGINT. A studio started in the background of a script (`lorakit studio &`)
    # passes SIGINT on ignored, an ignored signal stays ignored in a child, and Python then never raises
    # KeyboardInterrupt: the job could not be stopped. A handled signal is reset to its default in the child.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from lorakit.studio.jobs import exit_file

    code = 1
    try:
        child = subprocess.Popen([sys.executable, "-m", "lorakit", *command],
                                 preexec_fn=_die_with_parent(os.getpid()) if sys.platform == "linux" else None)
    except KeyboardInterrupt:  # a stop before the command started
        code = 130
    else:
        code = _wait(child)
    if code >= 0:
        exit_file(Path(run_dir), job).write_text(f"{code}\n")
    return code if code >= 0 else 128 - code


def _die_with_parent(parent_pid: int):
    """Runs in the child before the CLI starts: SIGKILL when the runner (its parent) dies."""
    def arrange() -> None:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent_pid:  # the runner died before prctl took effect
            os._exit(1)

    return arrange


def _wait(child: subprocess.Popen) -> int:
    """The child's exit code (negative: killed by that signal); a SIGINT here is the child's to handle."""
    while True:
        try:
            return child.wait()
        except KeyboardInterrupt:
            continue


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
