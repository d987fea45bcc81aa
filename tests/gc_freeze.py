"""Full garbage collections in the test process skip what the session has imported (a pytest plugin that
tests/conftest.py loads).

A full collection (`gc.collect()`, or Python's own once enough objects have survived) walks every container
object the process tracks: with torch, transformers, peft, lorakit and pytest imported, ~420,000 objects, 0.5-0.9 s
a walk on the CI's 2 shared cores. `lorakit.training.loop.train` ends every run with one
(runtime/host_heap.release_freed_memory), and the suite trains hundreds of tiny runs in process. Measured with
gc.callbacks on the shared 2 cores: tests/cli spent 41.6 s of its 112 s in 105 full collections (5.6 s with
this plugin), tests/training 50.4 s (4.2 s), tests/export 31.4 s.

`gc.freeze()` moves the objects alive at that moment into a permanent generation that collections skip (the
fork-server idiom; what they traverse afterwards is only what the tests create). Frozen objects are still freed by
reference counting; only a reference cycle among them is never collected. So the freeze runs before the first
test of a test module, where the previous module's module- and class-scoped fixtures (a loaded model holds cycles)
are torn down and the new module's not yet built, and only after the session imported new modules since the last
freeze (modules, their classes and functions live until the process ends anyway). Each freeze first collects
what is garbage already, so nothing collectable is frozen.

Python starts a full collection on its own only when the objects waiting for one exceed a quarter of those that
survived the last; frozen objects no longer count among those, so after a freeze the automatic full collections
came about 1.5x as often (tests/export: 142 against 90). The third threshold (full collections per 10 middle ones) goes from 10 to 100: in
tests/export/test_embedded_export.py and test_gguf.py the full collections took 6.4 s instead of 20.3 s.
Explicit `gc.collect()` calls (every in-process training run ends with one) are unchanged.
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import pytest

# Freeze again once this many modules were imported since the last freeze (a test that first imports peft or a
# transformers architecture adds hundreds; a freeze costs one collection of the objects not yet frozen).
NEW_MODULES_TO_FREEZE = 25

# Middle-generation collections per automatic full collection (Python's default: 10).
FULL_COLLECTION_THRESHOLD = 100

_last = {"modules": 0, "test_module": None, "threshold": gc.get_threshold()}


def freeze_imported_objects() -> bool:
    """Collect the garbage, then freeze every live object, if enough modules were imported since the last
    freeze; returns whether it froze."""
    if len(sys.modules) - _last["modules"] < NEW_MODULES_TO_FREEZE:
        return False
    gc.collect()
    gc.freeze()
    _last["modules"] = len(sys.modules)
    return True


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before the fixtures of the first test of each test module are set up."""
    module = Path(item.path)
    if module != _last["test_module"]:
        _last["test_module"] = module
        freeze_imported_objects()


def pytest_configure(config: pytest.Config) -> None:
    _last["threshold"] = gc.get_threshold()
    gc.set_threshold(*_last["threshold"][:2], FULL_COLLECTION_THRESHOLD)
    # trio, imported after a freeze, registers its random generator with hypothesis, which warns when
    # gc.get_referrers finds no referrer; it cannot see frozen ones (trio's own module holds the generator).
    config.addinivalue_line("filterwarnings",
                            "ignore:It looks like `register_random` was passed:hypothesis.errors.HypothesisWarning")


def pytest_unconfigure(config: pytest.Config) -> None:
    gc.unfreeze()
    gc.set_threshold(*_last["threshold"])
