"""The studio's working folder: data files under WORKDIR/data, runs under WORKDIR/runs/NAME.

Every name the page sends is checked here, so no request can read or write outside the working folder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from lorakit.errors import LorakitError

__all__ = ["DATA_SUFFIXES", "Workspace"]

DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def _checked_name(name: str, what: str) -> str:
    if not _NAME.match(name) or ".." in name:
        raise LorakitError(f"'{name}' is not a usable {what} name.",
                           hint="Use letters, digits, '.', '_' and '-' only (no folders, no spaces).")
    return name


@dataclass(frozen=True)
class Workspace:
    root: Path

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def create(self) -> Workspace:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        return self

    def data_path(self, name: str, *, exists: bool = True) -> Path:
        """WORKDIR/data/NAME; with `exists`, a LorakitError when there is no such file."""
        path = self.data_dir / _checked_name(name, "data file")
        if not name.endswith(DATA_SUFFIXES + (".png",)):
            raise LorakitError(f"'{name}' is not a data file.", hint=f"Use one of {', '.join(DATA_SUFFIXES)}.")
        if exists and not path.is_file():
            raise LorakitError(f"No data file {name} in {self.data_dir}.", hint="Upload it or pick one from the list.")
        return path

    def run_dir(self, name: str, *, exists: bool = True) -> Path:
        path = self.runs_dir / _checked_name(name, "run")
        if exists and not path.is_dir():
            raise LorakitError(f"No run {name} in {self.runs_dir}.", hint="Create it in step 2 (Model and plan).")
        return path

    def data_files(self) -> list[dict]:
        files = sorted(p for p in self.data_dir.iterdir() if p.is_file() and p.suffix in DATA_SUFFIXES)
        return [{"name": p.name, "bytes": p.stat().st_size} for p in files]

    def runs(self) -> list[str]:
        return sorted(p.name for p in self.runs_dir.iterdir() if p.is_dir() and _NAME.match(p.name))
