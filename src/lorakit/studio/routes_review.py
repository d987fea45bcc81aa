"""Step 5, review: a clinician marks each answer of the run's last `lorakit eval` good or bad, may correct it and
add a note; each save is one append to the run's review.jsonl (lorakit.review.store: fsynced before the page
hears "saved", so a closed tab or a crash loses nothing acknowledged). The export button is
`lorakit review export RUN --sft FILE --preferences FILE` (the same library call), into the data folder, so the
files can be picked in step 1 for the next run.

The page sends only which answer it judges (source, item id, model) and the verdict: the prompt and the answer
stored with the review are read from the eval's own files, so a review always records the text that was judged.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from lorakit.errors import LorakitError
from lorakit.run.layout import ANSWERS_FILE, EVAL, FINAL, SAFETY_ANSWERS_FILE

__all__ = ["export_file_names", "router"]

router = APIRouter(prefix="/api/runs/{run}/review")


class ReviewBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: Literal["test", "safety"]
    item_id: str = Field(..., min_length=1)
    model: Literal["base", "tuned"]
    verdict: Literal["good", "bad"]
    corrected: str | None = Field(None, description="The answer as it should read; empty means none.")
    note: str | None = None
    reviewer: str | None = Field(None, max_length=200)


class ExportBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    conversational: bool = False
    overwrite: bool = False


def _run_dir(request: Request, run: str) -> Path:
    return request.app.state.workspace.run_dir(run)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] \
        if path.is_file() else []


def _eval_verdicts(run_dir: Path) -> dict[tuple[str, str, str], dict]:
    """(source, item id, model) -> what the eval said of that answer: the rules a safety answer failed, or a test
    answer's overlap with the reference answer."""
    verdicts = {}
    for row in _jsonl(run_dir / EVAL / ANSWERS_FILE):
        for model in ("base", "tuned"):
            verdicts["test", f"{row['source']}:{row['line']}", model] = {
                "reference": row["reference"], "rouge_l": row[model].get("rouge_l"),
                "token_f1": row[model].get("token_f1")}
    for row in _jsonl(run_dir / EVAL / SAFETY_ANSWERS_FILE):
        for model in ("base", "tuned"):
            verdicts["safety", row["id"], model] = {
                "category": row["category"], "kind": row["kind"], "passed": row[model]["passed"],
                "failed_rules": row[model]["failed_rules"], "truncated": row[model].get("truncated", False)}
    return verdicts


def _answers(run_dir: Path) -> list:
    from lorakit.review.answers import answers_to_review

    if not (run_dir / FINAL).is_dir():
        return []
    return answers_to_review(run_dir)


@router.get("")
def review_list(run: str, request: Request) -> dict:
    """Every answer of the last eval with its eval verdict and its latest review; every saved review, oldest first."""
    from lorakit.review.store import read_reviews

    run_dir = _run_dir(request, run)
    reviews = [asdict(review) for review in read_reviews(run_dir)]
    latest = {(r["source"], r["item_id"], r["model"]): r for r in reviews}
    verdicts = _eval_verdicts(run_dir)
    answers = []
    for answer in _answers(run_dir):
        key = (answer.source, answer.item_id, answer.model)
        answers.append({**asdict(answer), "eval": verdicts.get(key), "review": latest.get(key)})
    return {"run": run, "finished": (run_dir / FINAL).is_dir(), "answers": answers, "reviews": reviews}


def _optional(text: str | None) -> str | None:
    return text.strip() if text and text.strip() else None


@router.post("")
def save_review(run: str, body: ReviewBody, request: Request) -> dict:
    """One review, appended to RUN/review.jsonl (durably) before this answers."""
    from lorakit.review.store import append_review

    run_dir = _run_dir(request, run)
    found = [a for a in _answers(run_dir) if (a.source, a.item_id, a.model) == (body.source, body.item_id, body.model)]
    if not found:
        raise LorakitError(f"The last evaluation of {run} has no {body.model} answer to {body.source} item "
                           f"'{body.item_id}'.", hint="Reload the page: the run may have been evaluated again.")
    # The page keeps line breaks the reviewer typed in a correction or note; only blank text means none.
    corrected = body.corrected if _optional(body.corrected) else None
    review = found[0].review(body.verdict, corrected, _optional(body.note), _optional(body.reviewer))
    return {"saved": asdict(append_review(run_dir, review))}


def export_file_names(run: str) -> tuple[str, str]:
    """The SFT and preference files an export of `run` writes in the data folder."""
    return f"{run}.review-sft.jsonl", f"{run}.review-preferences.jsonl"


@router.post("/export")
def export(run: str, body: ExportBody, request: Request) -> dict:
    """`lorakit review export RUN --sft DATA/RUN.review-sft.jsonl --preferences DATA/RUN.review-preferences.jsonl`:
    corrections -> SFT rows, (corrected or good, bad) -> preference pairs; safety probes refused by id."""
    from lorakit.review.export import export_reviews

    workspace = request.app.state.workspace
    run_dir = _run_dir(request, run)
    sft, preferences = (workspace.data_path(name, exists=False) for name in export_file_names(run))
    result = export_reviews(run_dir, sft, preferences, conversational=body.conversational, overwrite=body.overwrite)
    flags = " --conversational" * body.conversational + " --overwrite" * body.overwrite
    return {"reviews": result.reviews, "sft_file": sft.name, "sft_rows": len(result.sft_rows),
            "preferences_file": preferences.name, "preference_rows": len(result.preference_rows),
            "refused": [{"item_id": r.item_id, "probe_ids": list(r.probe_ids)} for r in result.refused],
            "contradictory": list(dict.fromkeys(result.contradictory)),
            "command": f"lorakit review export {run_dir} --sft {sft} --preferences {preferences}{flags}"}
