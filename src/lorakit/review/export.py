"""Reviews -> training data: corrected answers as SFT rows, (better, worse) answers as preference pairs.

Per reviewed item (a test question, a chat turn), the latest review of each model's answer counts. The
preferred answer is the latest correction, else the latest answer judged good; every answer judged bad
becomes the rejected side of one pair. Every row carries its `origin` (run, step, item, model, reviewer,
time), which the data readers keep out of training.

Safety probes and their twins never become training rows: the eval would then grade answers the model was
trained on. An item is refused when its id is a probe id, or when any of its texts shares a 13-word
sequence with a probe (the contamination check `lorakit data check` runs); the summary names the probe.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lorakit.data.contamination import ContaminationIndex, Reference
from lorakit.errors import LorakitError, OutputExistsError
from lorakit.evaluation.safety import Probe, load_probes
from lorakit.review.store import Review, read_reviews
from lorakit.run.layout import CONFIG, REVIEW_FILE
from lorakit.runtime.atomic_files import atomic_write_text

__all__ = ["RefusedItem", "ReviewExport", "export_reviews", "review_rows"]


@dataclass(frozen=True)
class RefusedItem:
    item_id: str
    probe_ids: tuple[str, ...]


@dataclass
class ReviewExport:
    """What an export wrote (rows, not yet on disk until `export_reviews` writes them) and what it refused."""

    reviews: int = 0
    sft_rows: list[dict] = field(default_factory=list)
    preference_rows: list[dict] = field(default_factory=list)
    refused: list[RefusedItem] = field(default_factory=list)
    contradictory: list[str] = field(default_factory=list)  # items whose good and bad answers are the same text


def _origin(review: Review, side: str | None = None) -> dict:
    origin = {"run_id": review.run_id, "step": review.step, "source": review.source, "item_id": review.item_id,
              "model": review.model, "reviewer": review.reviewer, "time": review.time}
    return origin if side is None else {**origin, "side": side}


def _same(a: str, b: str) -> bool:
    return " ".join(a.split()) == " ".join(b.split())


def _probe_ids(reviews: Sequence[Review], probes: dict[str, Probe], index: ContaminationIndex) -> tuple[str, ...]:
    ids = [r.item_id for r in reviews if r.item_id in probes]
    texts = [text for r in reviews for text in (r.prompt, r.answer, r.corrected or "")]
    ids += [ref.id for text in texts for ref in index.matches(text)]
    return tuple(dict.fromkeys(ids))


def _preference_row(prompt: str, chosen: str, rejected: str, conversational: bool, origin: dict) -> dict:
    if not conversational:
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "origin": origin}
    return {"prompt": [{"role": "user", "content": prompt}], "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}], "origin": origin}


def review_rows(reviews: Sequence[Review], probes: Sequence[Probe], conversational: bool = False) -> ReviewExport:
    """The SFT and preference rows of `reviews` (pure: no files), safety-probe items refused."""
    by_probe_id = {probe.id: probe for probe in probes}
    index = ContaminationIndex(Reference(p.id, "safety probe", p.prompt, is_safety_probe=True) for p in probes)
    latest: dict[str, dict[str, Review]] = {}  # item -> model -> its latest review
    for review in reviews:
        latest.setdefault(review.item_id, {})[review.model] = review
    result = ReviewExport(reviews=len(reviews))
    for item_id, by_model in latest.items():
        judged = sorted(by_model.values(), key=lambda r: r.time)
        probe_ids = _probe_ids(judged, by_probe_id, index)
        if probe_ids:
            result.refused.append(RefusedItem(item_id, probe_ids))
            continue
        corrected = [r for r in judged if r.corrected is not None]
        good = [r for r in judged if r.verdict == "good"]
        bad = [r for r in judged if r.verdict == "bad"]
        # A reviewer who corrects both models' answers to one question usually writes the same correction
        # twice: one SFT row per distinct text (the latest review's origin), or training over-weights it.
        distinct = {" ".join(r.corrected.split()): r for r in corrected}
        for review in distinct.values():
            result.sft_rows.append({"instruction": review.prompt, "response": review.corrected,
                                    "origin": _origin(review)})
        if corrected:
            preferred, text = corrected[-1], corrected[-1].corrected
        elif good:
            preferred, text = good[-1], good[-1].answer
        else:
            continue
        for worse in bad:
            if _same(text, worse.answer):
                result.contradictory.append(item_id)
                continue
            origin = {"chosen": _origin(preferred, "corrected" if corrected else "good"),
                      "rejected": _origin(worse, "bad")}
            result.preference_rows.append(_preference_row(worse.prompt, text, worse.answer, conversational, origin))
    return result


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def _run_probe_files(run_dir: Path) -> list[str]:
    """The probe files the run's config adds to the shipped ones (its eval.probe_files)."""
    from lorakit.run.source import load_saved_config

    config = Path(run_dir) / CONFIG
    return list(load_saved_config(config).eval.probe_files) if config.is_file() else []


def export_reviews(run_dir: str | Path, sft_path: str | Path | None, preferences_path: str | Path | None, *,
                   conversational: bool = False, overwrite: bool = False) -> ReviewExport:
    """Write the run's reviews as SFT rows and/or preference rows (JSON Lines, each file atomically).
    Items of the shipped probes and of the run's own probe files (eval.probe_files) are refused."""
    if sft_path is None and preferences_path is None:
        raise LorakitError("Nothing to export to.", hint="Pass --sft FILE, --preferences FILE, or both.")
    reviews = read_reviews(run_dir)
    if not reviews:
        raise LorakitError(f"{Path(run_dir) / REVIEW_FILE} holds no reviews.",
                           hint="Review the run's answers first (the studio's review step), then export.")
    targets = {Path(path): kind for path, kind in ((sft_path, "sft"), (preferences_path, "preferences"))
               if path is not None}
    for path in targets:
        if path.exists() and not overwrite:
            raise OutputExistsError(f"{path} already exists; nothing was written.",
                                    hint="Pass --overwrite to replace it, or name another file.")
    result = review_rows(reviews, load_probes(_run_probe_files(Path(run_dir))), conversational)
    for path, kind in targets.items():
        _write_jsonl(path, result.sft_rows if kind == "sft" else result.preference_rows)
    return result
