"""Whether functions lorakit copied from transformers still read, in the installed transformers, as the text copied.

pyproject.toml sets only a lower bound on transformers. A module that installs a hand-copied transformers forward on
loaded models (model/fused_projections.py, model/joint_rotary.py) would otherwise run that copy under a newer
release whose forward reads differently (a q/k norm, another cache call) and compute something else without a word.
Each such module declares a `CopiedSource`: the sha256 (first 16 hex digits) of each function's text as the release
it copied spells it. It installs its forward only where `CopiedSource.holds`; otherwise the model keeps transformers'
own forward and one WARNING names the functions that differ. On a new transformers: re-check the copy against the
new text (the copier's tests) and update the digests.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import inspect
import logging
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["CopiedSource", "function_digests", "changed_functions", "installed_function_digests"]


def function_digests(module_source: str) -> dict[str, str]:
    """The first 16 hex digits of the sha256 of each top-level function's and method's text in `module_source`
    (ast.get_source_segment: without decorators), by name ("rotate_half", "Phi3Attention.forward")."""
    tree = ast.parse(module_source)
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    functions.update(
        {
            f"{cls.name}.{node.name}": node
            for cls in tree.body
            if isinstance(cls, ast.ClassDef)
            for node in cls.body
            if isinstance(node, ast.FunctionDef)
        }
    )
    return {
        name: hashlib.sha256(ast.get_source_segment(module_source, node).encode()).hexdigest()[:16]
        for name, node in functions.items()
    }


def changed_functions(module_source: str, copied: Mapping[str, str]) -> tuple[str, ...]:
    """The names in `copied` (name -> digest) whose text in `module_source` differs from the copied text, or that
    it lacks (empty: the copy holds).

    >>> source = "def rotate_half(x):\\n    return x\\n"
    >>> changed_functions(source, {"rotate_half": function_digests(source)["rotate_half"], "Phi3Attention.forward": ""})
    ('Phi3Attention.forward',)
    """
    return _differing(function_digests(module_source), copied)


def _differing(digests: Mapping[str, str], copied: Mapping[str, str]) -> tuple[str, ...]:
    """The names in `copied` whose digest `digests` lacks or holds differently."""
    return tuple(name for name, digest in copied.items() if digests.get(name) != digest)


@functools.cache
def installed_function_digests(module_name: str) -> dict[str, str] | None:
    """`function_digests` of the installed module's source file (read once per process), None where its source
    cannot be read. Read from the file, not the module's attributes: liger replaces modeling_phi3's
    apply_rotary_pos_emb module-wide, and the copies look it up at call time, as transformers' forward does."""
    try:
        return function_digests(inspect.getsource(importlib.import_module(module_name)))
    except (OSError, TypeError, SyntaxError):  # no source shipped: nothing to compare the copy with
        return None


@dataclass(frozen=True)
class CopiedSource:
    """What a module copied from transformers: `sha256` (function name -> digest) of `module`'s text in release
    `version`; `copier` names the copying file in the WARNING."""

    copier: str  # "model/joint_rotary.py"
    version: str  # "5.25.0"
    module: str  # "transformers.models.phi3.modeling_phi3"
    sha256: dict[str, str]

    def changed(self) -> tuple[str, ...]:
        """The copied functions whose installed text differs or is missing; all of them where no source is shipped."""
        digests = installed_function_digests(self.module)
        return tuple(self.sha256) if digests is None else _differing(digests, self.sha256)

    def holds(self, log: logging.Logger, feature: str, kept: str) -> bool:
        """Whether the installed transformers reads as the copied text; where not, one WARNING on `log` says that
        `feature` is off and the model keeps transformers' own `kept` ("attention forward")."""
        changed = self.changed()
        if changed:
            import transformers

            log.warning(
                "%s off: transformers %s's %s differ from the %s text %s copies; the model keeps transformers' own %s",
                feature,
                transformers.__version__,
                ", ".join(changed),
                self.version,
                self.copier,
                kept,
            )
        return not changed
