"""`lorakit eval score ANSWERS.jsonl`: score safety answers produced elsewhere (an exported model in llama.cpp
or Ollama, another model entirely) exactly as `lorakit eval --safety` scores a run's, without loading a model.

ANSWERS.jsonl holds one object per line: {"probe_id": "dosing-006", "answer": "...", "model": "any label"}.
Answers of several models may share a file; each label is scored on its own, and a probe or twin a label has
no answer for counts as failed (so answering only the easy half cannot raise a score).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from lorakit.errors import DataError
from lorakit.evaluation.judge_client import JudgeSpec, open_judge
from lorakit.evaluation.safety import Probe, load_probes
from lorakit.evaluation.safety_section import models_section

__all__ = ["ANSWER_FIELDS", "read_answers", "score_answer_file"]

ANSWER_FIELDS = ("probe_id", "answer", "model")


def read_answers(path: Path, probes: Iterable[Probe]) -> dict[str, dict[str, str]]:
    """model label -> probe id -> answer; DataError naming file, line and field for the first bad line."""
    known = {p.id for p in probes}
    if not path.is_file():
        raise DataError(str(path), None, None, "answers file not found")
    answers: dict[str, dict[str, str]] = {}
    first_line: dict[tuple[str, str], int] = {}
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(str(path), number, None, f"not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise DataError(str(path), number, None, "expected a JSON object with probe_id, answer and model")
        for name in record:
            if name not in ANSWER_FIELDS:
                raise DataError(str(path), number, name, f"unknown field; an answer has exactly {', '.join(ANSWER_FIELDS)}")
        for name in ANSWER_FIELDS:
            value = record.get(name)
            if not isinstance(value, str) or (name != "answer" and not value.strip()):
                raise DataError(str(path), number, name, "missing; expected a string" +
                                ("" if name == "answer" else " that is not empty"))
        probe_id, model = record["probe_id"], record["model"]
        if probe_id not in known:
            raise DataError(str(path), number, "probe_id", f"unknown probe id '{probe_id}'",
                            hint="Use the ids of lorakit/safety/probes.jsonl (or of a file given with --probes).")
        if (model, probe_id) in first_line:
            raise DataError(str(path), number, "probe_id", f"a second answer of model '{model}' to '{probe_id}' "
                            f"(first at line {first_line[(model, probe_id)]})")
        first_line[(model, probe_id)] = number
        answers.setdefault(model, {})[probe_id] = record["answer"]
    if not answers:
        raise DataError(str(path), None, None, "no answers in the file")
    return answers


def score_answer_file(path: str | Path, probe_files: Iterable[str | Path] = (), judge: JudgeSpec | None = None) -> dict:
    """The safety section for every model in the file, plus each answer's verdict (`answers`), and with `judge`
    the judge model's agreement with the rules (evaluation/judge.py)."""
    probes = load_probes(probe_files)
    answers = read_answers(Path(path), probes)
    section, scores = models_section(probes, answers)
    verdicts = [{"probe_id": probe_id, "model": model, "passed": score.passed, "failed_rules": list(score.failed)}
                for model, by_id in scores.items() for probe_id, score in by_id.items()]
    for model in section["models"].values():
        for summary in model["categories"].values():
            summary["score"] = summary["pair_score"]
    result = {"answers_file": str(path), **section, "answers": verdicts}
    if judge is not None:
        from lorakit.evaluation.judge import judge_answer_sets

        result["judge"] = judge_answer_sets(open_judge(judge), judge, probes, answers, scores)
    return result
