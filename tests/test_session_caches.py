"""A test run writes its caches into the session's temporary folder (tests/session_caches.py), never under the
home folder; full collections skip what the session froze (tests/gc_freeze.py) and still collect what tests make."""

from __future__ import annotations

import gc
import os
import weakref
from pathlib import Path

from gc_freeze import freeze_imported_objects
from lorakit.data.conversation import Conversation, Message
from lorakit.data.token_cache import render_cached
from lorakit.runtime.cache_dir import cache_root
from session_caches import CACHE_VARIABLES, session_cache_root


def test_a_tests_cache_write_lands_in_the_sessions_folder_and_nothing_under_home(tokenizer, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))  # where ~ would send a write that no variable redirects
    root = session_cache_root()
    assert root.is_dir() and not root.is_relative_to(home)
    for name, folder in CACHE_VARIABLES.items():
        assert os.environ[name] == str(root / folder), name
    # Read when huggingface_hub was first imported: the plugin set HF_HOME before any test module imported it.
    from huggingface_hub import constants

    assert Path(constants.HF_HOME) == root / "huggingface" and Path(constants.HF_HUB_CACHE).is_relative_to(root)

    conversation = Conversation((Message("user", f"Where does {tmp_path.name} go?"), Message("assistant", "Away.")),
                                "d.jsonl", 1)
    render_cached([conversation], tokenizer, "Be brief.", 64)  # the default cache folder, as every run uses it
    assert cache_root() == root / "lorakit"
    assert len(list((root / "lorakit" / "tokenized").glob("*.npz"))) >= 1
    assert sorted(home.rglob("*")) == []


class _Cycle:
    def __init__(self):
        self.me = self


def test_a_freeze_keeps_collecting_the_cycles_tests_make_afterwards(monkeypatch):
    import gc_freeze

    monkeypatch.setitem(gc_freeze._last, "modules", -gc_freeze.NEW_MODULES_TO_FREEZE)  # as if many were imported
    assert freeze_imported_objects() and gc.get_freeze_count() > 0
    assert not freeze_imported_objects()  # no module imported since: no second freeze
    made = _Cycle()
    alive = weakref.ref(made)
    del made
    gc.collect()
    assert alive() is None
