"""Answers written as they are generated, so that a stopped evaluation continues where it stopped.

A journal is append-only JSONL under RUN_DIR/eval/: a header line with the settings the answers depend on
(adapter, generation settings, system prompt), then one line per answer, flushed to disk as it comes. A
rerun with the same header reuses every recorded answer whose prompt is unchanged and generates only the
rest; a rerun with different settings starts a new journal (the old answers do not belong to it). A line
torn by a kill is ignored. The journal is removed once the evaluation's result files are written.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from lorakit.inference.generate import Answer
from lorakit.runtime.logging import get_logger

__all__ = ["AnswerJournal", "prompt_key"]

log = get_logger("evaluation.answer_journal")


def prompt_key(model: str, item_id: str, prompt_text: str) -> str:
    """Identifies one answer: who answered which item, and the exact prompt it was asked.

    >>> prompt_key("base", "dosing-001", "How much?") == prompt_key("base", "dosing-001", "How much?")
    True
    >>> prompt_key("base", "dosing-001", "How much?") == prompt_key("tuned", "dosing-001", "How much?")
    False
    """
    digest = hashlib.sha256(prompt_text.encode("utf-8")).hexdigest()[:16]
    return f"{model}/{item_id}/{digest}"


class AnswerJournal:
    """`answers` maps prompt_key -> Answer for everything already recorded under the same header."""

    def __init__(self, path: Path, header: dict):
        self.path = path
        self.header = header
        self.answers: dict[str, Answer] = self._read()
        self._file = None

    def _read(self) -> dict[str, Answer]:
        if not self.path.is_file():
            return {}
        lines = self.path.read_text(encoding="utf-8").splitlines()
        try:
            header = json.loads(lines[0])["header"] if lines else None
        except (json.JSONDecodeError, KeyError, TypeError):
            header = None
        if header != self.header:
            log.warning("%s holds answers for other settings (%d lines); starting over", self.path, len(lines) - 1)
            self.path.unlink()
            return {}
        answers = {}
        for line in lines[1:]:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # the last line, cut by a kill mid-write
            answers[record["key"]] = Answer(record["text"], tuple(record["token_ids"]), record["finish_reason"])
        log.info("continuing from %s: %d answers already generated", self.path, len(answers))
        return answers

    def record(self, key: str, answer: Answer) -> None:
        """Append one answer and push it to disk before generation goes on."""
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fresh = not self.path.is_file()
            torn = not fresh and not self.path.read_bytes().endswith(b"\n")
            self._file = self.path.open("a", encoding="utf-8")
            if fresh:
                self._file.write(json.dumps({"header": self.header}, ensure_ascii=False) + "\n")
            elif torn:
                self._file.write("\n")  # end the line a kill cut short, so the next record stands on its own
        self._file.write(json.dumps({"key": key, "text": answer.text, "token_ids": list(answer.token_ids),
                                     "finish_reason": answer.finish_reason}, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.answers[key] = answer

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def remove(self) -> None:
        """The evaluation finished and its result files hold every answer."""
        self.close()
        self.path.unlink(missing_ok=True)
