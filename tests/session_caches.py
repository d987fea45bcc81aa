"""Every cache a test run writes goes to one temporary folder of the session, never under the user's home (a
pytest plugin that tests/conftest.py loads).

lorakit keeps tokenized data and converted GGUF weights in LORAKIT_CACHE_DIR, else ~/.cache/lorakit
(runtime/cache_dir.py); huggingface_hub, transformers and datasets in HF_HOME, else ~/.cache/huggingface;
matplotlib and Chromium under the XDG folders, else ~/.cache, ~/.config and ~/.local/share; wandb there and in
WANDB_CACHE_DIR. A test run on a developer's machine filled ~/.cache/lorakit/tokenized with thousands of files,
and a warm cache there could hide a first-run cost or bug that CI's fresh clone would meet. The variables are set
when pytest configures, before any test module is imported (huggingface_hub reads HF_HOME when it is imported),
for the test process and every process it starts with its environment; they are restored, and the folder
removed, when pytest ends. tests/test_session_caches.py fails if a test's cache write would still reach the home
folder. (Checked: a run of tests/training, cli, export and studio with HOME set to an empty folder left it empty.)
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Variable -> its folder under the session's cache root.
CACHE_VARIABLES = {"LORAKIT_CACHE_DIR": "lorakit", "HF_HOME": "huggingface", "MPLCONFIGDIR": "matplotlib",
                   "XDG_CACHE_HOME": "xdg-cache", "XDG_CONFIG_HOME": "xdg-config", "XDG_DATA_HOME": "xdg-data",
                   # wandb's system monitor logs to WANDB_CACHE_DIR, else $HOME/.cache/wandb (not XDG_CACHE_HOME).
                   "WANDB_CACHE_DIR": "wandb"}

_saved: dict[str, str | None] = {}
_root: list[Path] = []


def session_cache_root() -> Path:
    """The temporary folder that holds this session's caches."""
    return _root[0]


def pytest_configure(config: pytest.Config) -> None:
    root = Path(tempfile.mkdtemp(prefix="lorakit-test-caches-"))
    _root.append(root)
    for name, folder in CACHE_VARIABLES.items():
        _saved[name] = os.environ.get(name)
        os.environ[name] = str(root / folder)


def pytest_unconfigure(config: pytest.Config) -> None:
    for name, value in _saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    shutil.rmtree(_root.pop(), ignore_errors=True)
