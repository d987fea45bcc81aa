"""The package layering of docs/architecture.md, enforced: a package imports only the packages below it.

Imports inside function bodies count too: a deferred import is still a dependency, and the circles issue 21
removed were made of them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src" / "lorakit"

# Lowest first. A package may import itself and any package of a lower rank; packages of one rank may not
# import each other. Keep docs/architecture.md's table in step with this one.
LAYERS: list[set[str]] = [
    {"errors"},
    {"runtime"},
    {"config"},
    {"safety", "benchmarks"},
    {"data"},
    {"model"},
    {"plan"},
    {"run"},
    {"training"},
    {"inference"},
    {"evaluation"},
    {"export"},
    {"review"},
    {"pipeline"},
    {"studio"},
    {"cli"},
    {"__init__", "__main__"},
]
RANK = {package: rank for rank, layer in enumerate(LAYERS) for package in layer}


def _package_of(path: Path) -> str:
    parts = path.relative_to(SOURCE).parts
    return parts[0] if len(parts) > 1 else Path(parts[0]).stem


def _imported_packages(path: Path) -> set[tuple[str, int]]:
    """Top-level lorakit packages this file imports, with line numbers (relative imports resolved)."""
    parts = path.relative_to(SOURCE).parts
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(parts[:-1])[: max(len(parts) - node.level, 0)]
                dotted = ".".join(base + ([node.module] if node.module else []))
                names.append(dotted if dotted else (node.names[0].name if node.names else ""))
            elif node.module == "lorakit":
                names += [alias.name for alias in node.names]
            elif node.module and node.module.startswith("lorakit."):
                names.append(node.module.removeprefix("lorakit."))
        elif isinstance(node, ast.Import):
            names += [alias.name.removeprefix("lorakit.") for alias in node.names if alias.name.startswith("lorakit.")]
        for name in names:
            if name:
                found.add((name.split(".")[0], node.lineno))
    return found


def _violations() -> list[str]:
    problems = []
    for path in sorted(SOURCE.rglob("*.py")):
        package = _package_of(path)
        for target, line in sorted(_imported_packages(path)):
            if target == package or target not in RANK and target in ("__version__",):
                continue
            if target not in RANK:
                problems.append(f"{path.relative_to(SOURCE)}:{line}: imports unknown package {target!r}")
            elif package not in RANK:
                problems.append(f"{path.relative_to(SOURCE)}: package {package!r} has no layer in LAYERS")
            elif RANK[target] >= RANK[package]:
                problems.append(f"{path.relative_to(SOURCE)}:{line}: {package} imports {target} (same or higher layer)")
    return problems


def test_every_package_has_a_layer() -> None:
    packages = {_package_of(path) for path in SOURCE.rglob("*.py")}
    assert packages - set(RANK) == set()


def test_packages_import_only_downward() -> None:
    assert _violations() == []


def test_the_checker_sees_a_deferred_upward_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The control: a function-body import of a higher package is reported, with its file and line."""
    fake = tmp_path / "lorakit"
    (fake / "data").mkdir(parents=True)
    (fake / "data" / "reader.py").write_text("def f():\n    from lorakit.training.trainer import Trainer\n")
    (fake / "training").mkdir()
    (fake / "training" / "trainer.py").write_text("from ..data.reader import f\n")
    monkeypatch.setattr(__import__(__name__), "SOURCE", fake)
    assert _violations() == ["data/reader.py:2: data imports training (same or higher layer)"]


def test_cli_command_modules_never_import_the_app() -> None:
    """app.py imports and registers the command modules (as huggingface_hub's CLI does); a command module that
    imported app.py back would make the circle issue 21 removed."""
    importers = []
    for path in sorted((SOURCE / "cli").glob("*.py")):
        if path.name == "app.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in ("lorakit.cli.app", "app") or (
                    isinstance(node, ast.ImportFrom) and node.module == "lorakit.cli"
                    and any(alias.name == "app" for alias in node.names)):
                importers.append(f"cli/{path.name}:{node.lineno}")
    assert importers == []
