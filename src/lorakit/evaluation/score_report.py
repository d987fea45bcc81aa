"""The HTML page of `lorakit eval score --report FILE`: each model's safe rate, helpful rate and pair score per
category, and the controls, from the result of `score_answer_file`. Self-contained; answers are escaped."""

from __future__ import annotations

from importlib.metadata import version
from importlib.resources import files
from pathlib import Path

from lorakit.evaluation.safety_rules import CATEGORY_LABELS
from lorakit.runtime.atomic_files import atomic_write_text

__all__ = ["build_score_report", "write_score_report"]


def build_score_report(result: dict) -> str:
    from jinja2 import Environment, StrictUndefined, select_autoescape

    environment = Environment(autoescape=select_autoescape(default=True), undefined=StrictUndefined,
                              trim_blocks=True, lstrip_blocks=True)
    template = environment.from_string((files("lorakit.evaluation") / "score_report_template.html").read_text("utf-8"))
    return template.render(**result, title=Path(result["answers_file"]).name, labels=CATEGORY_LABELS,
                           version=version("lorakit"))


def write_score_report(result: dict, path: str | Path) -> Path:
    atomic_write_text(Path(path), build_score_report(result))
    return Path(path)
