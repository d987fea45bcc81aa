"""Named export steps: progress reports, and any failure turned into one ExportError naming the step."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from lorakit.errors import DiskFullError, ExportError, LorakitError
from lorakit.runtime.atomic_files import is_disk_full

__all__ = ["STEPS", "ExportSteps"]

STEPS = ("check", "load", "measure", "merge", "convert", "quantize", "write", "upload")


class ExportSteps:
    """`with steps.step("merge", "what"):` reports the step to `on_step` and names it if it fails."""

    def __init__(self, on_step: Callable[[str, str], None] | None = None):
        self.on_step = on_step or (lambda step, description: None)
        self.done: list[str] = []

    @contextlib.contextmanager
    def step(self, name: str, description: str, quiet: bool = False) -> Iterator[None]:
        """`quiet` names a failure without reporting progress (a step inside a loop over tensors)."""
        assert name in STEPS, name
        if not quiet:
            self.on_step(name, description)
        try:
            yield
        except (LorakitError, KeyboardInterrupt):
            raise
        except Exception as exc:
            if is_disk_full(exc):
                raise DiskFullError(f"The disk filled up during the export's '{name}' step ({exc}); nothing was "
                                    "written.", hint="Free some space (or pass --output on another disk) and run "
                                    "the export again.") from None
            raise ExportError(name, f"{type(exc).__name__}: {exc}",
                              hint="Nothing was written; fix the cause and run the same command again.") from exc
        if not quiet:
            self.done.append(name)
