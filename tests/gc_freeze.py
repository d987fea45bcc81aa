"""Full garbage collections in the test process skip what the session has imported (a pytest plugin that
tests/conftest.py loads).

A full collection (`gc.collect()`, or Python's own once enough objects have survived) walks every container
object the process tracks: with torch, transformers, peft, lorakit and pytest imported, ~420,000 objects, 0.5-0.9 s
a walk on the CI's 2 shared cores. `lorakit.training.loop.train` ends every run with one
(runtime/host_heap.release_freed_memory), and the suite trains hundreds of tiny runs in process: tests/cli spent
92 s of its 304 s in 103 full collections (measured with gc.callbacks on a loaded machine).

`gc.freeze()` moves the objects alive at that moment into a permanent generation that collections skip (the
fork-server idiom; what they traverse afterwards is only what the tests create). Frozen objects are still freed by
reference counting; only a reference cycle among them is never collected. So the freeze runs before the first
test of a test module, where the previous module's module- and class-scoped fixtures (a loaded model holds cycles)
are torn down and the new module's not yet built, and only after the session imported new modules since the last
freeze (modules, their classes and functions live until the process ends anyway). Each freeze first collects
what is garbage already, so nothing collectable is frozen.
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import pytest

# Freeze again once this many modules were imported since the last freeze (a test that first imports peft or a
# transformers architecture adds hundreds; a freeze costs one collection of the objects not yet frozen).
NEW_MODULES_TO_FREEZE = 25

_last = {"modules": 0, "test_module": None}


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
    # trio, imported after a freeze, registers its random generator with hypothesis, which warns when
    # gc.get_referrers finds no referrer; it cannot see frozen ones (trio's own module holds the generator).
    config.addinivalue_line("filterwarnings",
                            "ignore:It looks like `register_random` was passed:hypothesis.errors.HypothesisWarning")


def pytest_unconfigure(config: pytest.Config) -> None:
    gc.unfreeze()
