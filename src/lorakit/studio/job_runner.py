"""`python -m lorakit.studio.job_runner RUN_DIR JOB -- ARGS...`: run one `lorakit ARGS...` command line for the
studio and record its exit code in RUN_DIR/studio-JOB.exit, so that the page can tell how a job ended even
after the studio itself was restarted. The command is the CLI's own (`run_cli`): same messages, same codes."""

from __future__ import annotations

import signal
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    run_dir, job, separator, *command = argv
    assert separator == "--", "usage: job_runner RUN_DIR JOB -- ARGS..."
    # The page's stop button is a SIGINT. A studio started in the background of a script (`lorakit studio &`)
    # passes SIGINT on ignored, and Python then never raises KeyboardInterrupt: the job could not be stopped.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from lorakit.cli.app import run_cli
    from lorakit.studio.jobs import exit_file

    code = 1
    try:
        code = run_cli(command)
    except KeyboardInterrupt:  # a stop before the command's own handler was in place
        code = 130
    finally:
        exit_file(Path(run_dir), job).write_text(f"{code}\n")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
