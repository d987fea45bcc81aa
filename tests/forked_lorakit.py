"""`lorakit` processes forked from one Python that has imported lorakit once (a zygote).

The kill-9 loop of training/test_crash_safety.py starts ~25 `lorakit train` processes; as `python -m lorakit` each
spent ~4-5 s of its ~7 s importing torch, transformers, peft and lorakit before its first step. A forked child
starts with those modules already imported (and nothing yet run: the zygote only imports), then runs the same
entry point as `python -m lorakit` (`sys.exit(run_cli(argv))`) as a real, separate process that the test can
SIGKILL at any moment. model/test_hub_faults.py forks its 17 failing commands from a zygote that imported only
`lorakit.cli.app` (torch, not huggingface_hub, which reads the HF_* variables of each child's own environment when
the child imports it). Run as a script, this module is the zygote; `Zygote` is the test's side.
"""

from __future__ import annotations

import gc
import io
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

# What `lorakit train` imports on its way (measured with sys.modules before and after one tiny run); anything
# missed here is still imported by the child, only more slowly.
TRAINING_STACK = ("lorakit.cli.app", "lorakit.cli.train", "lorakit.pipeline.train_evaluate", "lorakit.training.loop",
           "lorakit.training.session", "lorakit.training.trainer", "lorakit.training.finalize",
           "lorakit.model.load", "lorakit.model.adapters", "lorakit.run.final", "lorakit.inference.generate",
           "lorakit.evaluation.run_eval", "transformers.models.llama.modeling_llama", "peft")


class ForkedProcess:
    """The part of subprocess.Popen that the tests use, for a child of the zygote (not of this process: it is
    watched through a pidfd, or by polling its pid where the kernel refuses pidfds; its exit code comes from the
    file it writes just before it exits)."""

    def __init__(self, pid: int, folder: Path):
        self.pid, self.returncode = pid, None
        self._status, self._stderr = folder / "exit-code", folder / "stderr"
        self._pidfd, self._gone = None, False
        try:
            self._pidfd = os.pidfd_open(pid)
        except ProcessLookupError:  # already gone (the kernel reaps the zygote's children)
            self._gone = True
        except OSError:  # no pidfds here (an old kernel, a seccomp filter): poll the pid instead
            pass

    @property
    def stderr(self) -> io.BytesIO:
        return io.BytesIO(self._stderr.read_bytes() if self._stderr.is_file() else b"")

    def output(self) -> tuple[str, str]:
        """(stdout, stderr) as text, once the process has ended."""
        stdout = self._stderr.with_name("stdout")
        return stdout.read_text() if stdout.is_file() else "", self.stderr.read().decode()

    def poll(self) -> int | None:
        if self.returncode is None and self._ended(0):
            self._finished()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if not self._ended(timeout):
                self.send_signal(signal.SIGKILL)
                raise subprocess.TimeoutExpired(f"lorakit (pid {self.pid})", timeout)
            self._finished()
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None and not self._ended(0):
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, sig)
            else:
                os.kill(self.pid, sig)
            if sig == signal.SIGKILL:
                self.wait()
                self.returncode = -sig

    def _ended(self, timeout: float | None) -> bool:
        if self._gone:
            return True
        if self._pidfd is not None:
            self._gone = bool(select.select([self._pidfd], [], [], timeout)[0])
            return self._gone
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                os.kill(self.pid, 0)  # the zygote's children are reaped at once: a dead one has no pid
            except ProcessLookupError:
                self._gone = True
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.002)

    def _finished(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        self._gone = True
        text = self._status.read_text() if self._status.is_file() else ""
        self.returncode = int(text) if text.strip() else -signal.SIGKILL  # killed before it could write its code


class Zygote:
    """Starts `lorakit ARGS` processes that share one import of lorakit (see the module docstring)."""

    def __init__(self, env: dict, preload: tuple[str, ...] = TRAINING_STACK, not_imported: tuple[str, ...] = ()):
        """`preload`: modules the zygote imports; it refuses to start if that imported any of `not_imported`."""
        plan = json.dumps({"preload": list(preload), "not_imported": list(not_imported)})
        self._process = subprocess.Popen([sys.executable, __file__, plan], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, env=env, text=True)
        self._count, self._lock = 0, threading.Lock()

    def start(self, args: list[str], folder: Path, env: dict | None = None) -> ForkedProcess:
        """`lorakit ARGS` in a fresh child (with `env` as its whole environment, if given); its stdout, stderr and
        exit code go to files under `folder` (created here)."""
        with self._lock:  # one request, one answer: threads take turns
            self._count += 1
            folder = folder / f"process-{self._count}"
            folder.mkdir(parents=True)
            self._process.stdin.write(json.dumps({"args": args, "folder": str(folder), "env": env}) + "\n")
            self._process.stdin.flush()
            line = self._process.stdout.readline()
        assert line.strip().isdigit(), f"the zygote did not start a process (it said {line!r})"
        return ForkedProcess(int(line), folder)

    def close(self) -> None:
        self._process.stdin.close()
        self._process.wait(timeout=60)

    def __enter__(self) -> Zygote:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _run_child(args: list[str], folder: Path, env: dict | None) -> None:
    """In the forked child: what `python -m lorakit ARGS` does, stdout and stderr to files."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    if env is not None:
        os.environ.clear()
        os.environ.update(env)
    os.dup2(os.open(folder / "stdout", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 1)
    os.dup2(os.open(folder / "stderr", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 2)
    code = 1
    try:
        from lorakit.cli.app import run_cli

        code = run_cli(args)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        (folder / "exit-code").write_text(str(code))
        os._exit(code)


def _serve(plan: dict) -> None:
    import importlib

    for name in plan["preload"]:
        importlib.import_module(name)
    imported = [name for name in plan["not_imported"] if name in sys.modules]
    if imported:
        sys.exit(f"the zygote's preload imported {imported}, which must be imported in each child")
    # A child's full garbage collections (one at the end of every `lorakit train`) skip what the zygote imported,
    # ~0.5 s each on 2 shared cores (tests/gc_freeze.py), and leave those pages shared with the zygote.
    gc.collect()
    gc.freeze()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the children; the test watches them by pidfd
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _run_child(request["args"], Path(request["folder"]), request["env"])
        print(pid, flush=True)


if __name__ == "__main__":
    _serve(json.loads(sys.argv[1]))
