"""No module outside src/lorakit/run/ spells a run-folder file name: they all name them through run/layout.py, so
the writer (training, eval) and every reader (eval, export, chat, serve, the studio, the report) agree on one
spelling, and a rename is one edit.

Which names count, read from the Python syntax tree of every src/lorakit/**/*.py outside run/ (comments,
docstrings and messages that mention a name in prose are not checked: they are not where a file is opened):
- FILE_NAMES: a string literal equal to one of them, anywhere (a path, a set of names, a comparison).
- FOLDER_NAMES: plain words that are also CLI commands, JSON keys and job names ("eval", "export"), so they count
  only where they build a path (`path / "final"`) or are compared with a file's name (`p.name == "final"`).
Names another package owns inside the run folder are not listed: the studio's job files (studio.yaml,
studio-JOB.log, studio-JOB.pid: lorakit/studio) and an export folder's lorakit_export.json (lorakit/export).
tests/, bench/ and scripts/ are not checked on purpose: they verify the files on disk from outside, so they spell
the names and a rename in run/layout.py breaks them instead of passing silently.
"""

from __future__ import annotations

import ast
from pathlib import Path

from lorakit.run import layout

SRC = Path(__file__).resolve().parents[1] / "src" / "lorakit"

FILE_NAMES = {
    layout.LOCK_NAME, layout.CONFIG, layout.MANIFEST, layout.METRICS, layout.LOSS_CURVE, layout.REPORT_FILE,
    layout.REVIEW_FILE,
    layout.ADAPTER_WEIGHTS, layout.ADAPTER_CONFIG, layout.MODEL_CARD,
    layout.CHECKPOINT_MANIFEST, layout.TRAINER_STATE, layout.OPTIMIZER, layout.SCHEDULER, layout.SCALER, layout.RNG,
    layout.EVAL_FILE, layout.ANSWERS_FILE, layout.SAFETY_ANSWERS_FILE, layout.KNOWLEDGE_ANSWERS_FILE,
    *layout.JOURNAL_FILES.values(),
}
FOLDER_NAMES = {layout.FINAL, layout.CHECKPOINTS, layout.EVAL, layout.EXPORT, layout.TENSORBOARD}


def _spelled(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and node.value in FILE_NAMES:
            found.append((node.lineno, node.value))
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            found += [(side.lineno, side.value) for side in (node.left, node.right)
                      if isinstance(side, ast.Constant) and side.value in FOLDER_NAMES]
        elif isinstance(node, ast.Compare) and isinstance(node.left, ast.Attribute) and node.left.attr == "name":
            found += [(side.lineno, side.value) for side in node.comparators
                      if isinstance(side, ast.Constant) and side.value in FOLDER_NAMES]
    return found


def test_the_checker_finds_each_kind_of_spelling():
    code = ('a = run / "manifest.json"\nb = {"eval.json"}\nc = run / "final" / x\nd = p.name == "checkpoints"\n'
            'e = ("train", "eval", "export")\nf = {"checkpoints": []}\n')
    assert sorted(_spelled(ast.parse(code))) == [(1, "manifest.json"), (2, "eval.json"), (3, "final"),
                                                 (4, "checkpoints")]


def test_no_module_outside_run_spells_a_run_folder_file_name():
    offenders = [f"{path.relative_to(SRC.parent)}:{line}: {name!r}"
                 for path in sorted(SRC.rglob("*.py")) if SRC / "run" not in path.parents
                 for line, name in _spelled(ast.parse(path.read_text(encoding="utf-8")))]
    assert offenders == [], "name these through lorakit.run.layout:\n" + "\n".join(offenders)


def test_run_folder_modules_exist_and_layout_names_are_distinct():
    names = [value for key, value in vars(layout).items() if key.isupper() and isinstance(value, str)]
    assert len(names) == len(set(names))
    assert (SRC / "run" / "layout.py").is_file()
