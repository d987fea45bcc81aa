"""The committed example review of the README demo run (examples/demo_review.jsonl, docs/preference-tuning.md
"Replay the demo loop") still reads as reviews and exports to the pairs the measured demo trained on."""

from __future__ import annotations

import shutil
from pathlib import Path

from lorakit.evaluation.safety import load_probes
from lorakit.review.export import review_rows
from lorakit.review.store import read_reviews
from lorakit.run.layout import REVIEW_FILE

REPO = Path(__file__).resolve().parents[2]


def test_the_demo_review_exports_16_pairs_and_8_corrections_of_test_questions(tmp_path):
    shutil.copy(REPO / "examples" / "demo_review.jsonl", tmp_path / REVIEW_FILE)
    reviews = read_reviews(tmp_path)
    assert len(reviews) == 18 and {r.source for r in reviews} == {"test"} and {r.run_id for r in reviews} == {"demo"}
    assert sorted(r.verdict for r in reviews).count("good") == 2
    result = review_rows(reviews, load_probes())
    assert (len(result.preference_rows), len(result.sft_rows)) == (16, 8)
    assert not result.refused and not result.contradictory
    assert all(row["chosen"] != row["rejected"] for row in result.preference_rows)
