"""The errors lorakit raises for problems a user can fix, each with its exit code.

The CLI maps these (and only these) to one message and a non-zero exit; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import re

__all__ = [
    "mask_tokens",
    "LorakitError",
    "ConfigError",
    "DataError",
    "ModelLoadError",
    "HubAccessError",
    "CheckpointError",
    "TrainingError",
    "DiskFullError",
    "ExportError",
    "OutputExistsError",
    "JudgeError",
]


# A Hugging Face access token (hf_ + 34 letters and digits today; older ones were shorter).
_TOKEN_LIKE = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b")


def mask_tokens(text: str) -> str:
    """`text` with anything shaped like a Hugging Face token replaced by `hf_***`.

    >>> mask_tokens("training.max_steps: not an integer (got 'hf_abcdefghijklmnopqrstuvwxyz0123')")
    "training.max_steps: not an integer (got 'hf_***')"
    """
    return _TOKEN_LIKE.sub("hf_***", text)


class LorakitError(Exception):
    """Base class: a problem with the user's input or environment, reported without a traceback.

    Messages quote what the user gave (a config value, a `--set` line, a data field), and a token pasted in the
    wrong place would then be printed, written to a studio job's log, sent in a studio JSON response and shown
    in a `--debug` traceback (all of which print this message): so message and hint are masked here, once."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        message, hint = mask_tokens(message), mask_tokens(hint) if hint is not None else None
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n{self.hint}"


class ConfigError(LorakitError):
    """The YAML config or an override is invalid; `problems` lists every problem found, not just the first."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = [mask_tokens(problem) for problem in problems]
        lines = "\n".join(f"  - {p}" for p in self.problems)
        noun = "problem" if len(self.problems) == 1 else "problems"
        super().__init__(f"{source}: {len(self.problems)} config {noun}:\n{lines}")


class DataError(LorakitError):
    """A training-data record is unusable; names the file, 1-based line and field."""

    def __init__(self, path: str, line: int | None, field: str | None, message: str, hint: str | None = None):
        self.path = str(path)
        self.line = line
        self.field = field
        where = self.path if line is None else f"{self.path}:{line}"
        what = f" field '{field}':" if field else ""
        super().__init__(f"{where}:{what} {message}", hint)


class ModelLoadError(LorakitError):
    """The base model or tokenizer cannot be loaded (missing path, unsafe format, unknown architecture)."""


class HubAccessError(ModelLoadError):
    """The Hugging Face Hub refused or could not serve a model (gated, private, missing, offline)."""


class CheckpointError(LorakitError):
    """A run directory or checkpoint is missing, corrupt, finished, or does not match the config."""


class TrainingError(LorakitError):
    """Training stopped on a fault it cannot recover from (NaN loss, out of memory at micro-batch 1)."""

    exit_code = 3


class DiskFullError(LorakitError):
    """A write failed because the disk (or quota) is full; nothing was replaced, earlier files are intact."""

    exit_code = 3


class ExportError(LorakitError):
    """An export or upload failed at a named step (load, merge, convert, quantize, write, upload); nothing
    was left behind, so the command can simply be run again."""

    exit_code = 3

    def __init__(self, step: str, message: str, hint: str | None = None):
        self.step = step
        super().__init__(f"export failed at step '{step}': {message}", hint)


class OutputExistsError(LorakitError):
    """The output folder of an export already exists and --overwrite was not given."""


class JudgeError(LorakitError):
    """The judge model (`lorakit eval --judge`) could not be reached, or gave no usable verdict for an answer;
    the rules' verdicts never stand in for a missing judge verdict."""

    exit_code = 3
