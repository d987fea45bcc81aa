"""`lorakit review export`: corrections -> SFT rows, (corrected or good, bad) -> preference pairs with their origin;
safety probes (by id or by text) refused naming the probe; the exported pairs pass `data check`."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from lorakit.cli.app import run_cli
from lorakit.data.preference_check import check_preference_files
from lorakit.evaluation.safety import load_probes
from lorakit.review.export import export_reviews
from lorakit.review.store import Review, append_review

BASE = Review(run_id="demo", step=None, source="test", item_id="qa.jsonl:7", model="base", prompt="What is BP?",
              answer="Blood pressure is the force of blood on artery walls.", verdict="good",
              time="2026-12-07T06:00:00+00:00")
TUNED = replace(BASE, step=20, model="tuned", answer="A vitamin.", verdict="bad", corrected="Blood pressure.",
                reviewer="Dr. Osei", note="wrong", time="2026-12-07T06:01:00+00:00")


def _origin(review: Review, side=None) -> dict:
    origin = {"run_id": "demo", "step": review.step, "source": review.source, "item_id": review.item_id,
              "model": review.model, "reviewer": review.reviewer, "time": review.time}
    return origin if side is None else {**origin, "side": side}


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _reviewed_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    for review in (BASE, TUNED):
        append_review(run, review)
    # a second test item: only judged, no correction -> the good answer is preferred
    append_review(run, replace(BASE, item_id="qa.jsonl:9", prompt="What is insulin?", answer="A hormone.",
                               time="2026-12-07T06:02:00+00:00"))
    append_review(run, replace(TUNED, item_id="qa.jsonl:9", prompt="What is insulin?", answer="A sugar.",
                               corrected=None, time="2026-12-07T06:03:00+00:00"))
    probe = next(p for p in load_probes() if p.id == "dosing-006")
    append_review(run, replace(TUNED, source="safety", item_id="dosing-006-twin", prompt="How do statins work?"))
    append_review(run, replace(TUNED, source="chat", item_id="chat-3", prompt=probe.prompt))
    return run


def test_corrections_and_verdicts_become_rows_with_their_origin_and_probes_are_refused(tmp_path):
    run = _reviewed_run(tmp_path)
    result = export_reviews(run, tmp_path / "sft.jsonl", tmp_path / "pairs.jsonl")
    assert _rows(tmp_path / "sft.jsonl") == [
        {"instruction": "What is BP?", "response": "Blood pressure.", "origin": _origin(TUNED)}]
    insulin_good = replace(BASE, item_id="qa.jsonl:9", time="2026-12-07T06:02:00+00:00")
    insulin_bad = replace(TUNED, item_id="qa.jsonl:9", time="2026-12-07T06:03:00+00:00")
    assert _rows(tmp_path / "pairs.jsonl") == [
        {"prompt": "What is BP?", "chosen": "Blood pressure.", "rejected": "A vitamin.",
         "origin": {"chosen": _origin(TUNED, "corrected"), "rejected": _origin(TUNED, "bad")}},
        {"prompt": "What is insulin?", "chosen": "A hormone.", "rejected": "A sugar.",
         "origin": {"chosen": _origin(insulin_good, "good"), "rejected": _origin(insulin_bad, "bad")}},
    ]
    assert [(r.item_id, r.probe_ids) for r in result.refused] == [("dosing-006-twin", ("dosing-006-twin",)),
                                                                  ("chat-3", ("dosing-006",))]
    # what export writes is what training reads: the pairs pass the preference check
    assert check_preference_files([tmp_path / "pairs.jsonl"]).issues == []


def test_one_correction_of_both_answers_is_one_sft_row_and_two_pairs(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    base_bad = replace(BASE, answer="A lung disease.", verdict="bad", corrected="Blood  pressure.")
    append_review(run, base_bad)
    append_review(run, TUNED)  # the same correction, but for whitespace
    result = export_reviews(run, tmp_path / "sft.jsonl", tmp_path / "pairs.jsonl")
    assert _rows(tmp_path / "sft.jsonl") == [
        {"instruction": "What is BP?", "response": "Blood pressure.", "origin": _origin(TUNED)}]
    assert [(r["chosen"], r["rejected"]) for r in result.preference_rows] == [
        ("Blood pressure.", "A lung disease."), ("Blood pressure.", "A vitamin.")]


def test_conversational_pairs_and_a_contradiction_skipped(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    append_review(run, replace(BASE, answer="Same words."))
    append_review(run, replace(TUNED, answer="Same  words.", corrected=None))
    append_review(run, replace(BASE, item_id="x", answer="Good.", time="2026-12-07T07:00:00+00:00"))
    append_review(run, replace(TUNED, item_id="x", corrected=None, time="2026-12-07T07:01:00+00:00"))
    result = export_reviews(run, None, tmp_path / "pairs.jsonl", conversational=True)
    assert result.contradictory == ["qa.jsonl:7"]
    [row] = _rows(tmp_path / "pairs.jsonl")
    assert {key: row[key] for key in ("prompt", "chosen", "rejected")} == {
        "prompt": [{"role": "user", "content": "What is BP?"}], "chosen": [{"role": "assistant", "content": "Good."}],
        "rejected": [{"role": "assistant", "content": "A vitamin."}]}


def test_cli_prints_what_it_wrote_and_refused_and_keeps_existing_files(tmp_path, capsys):
    run = _reviewed_run(tmp_path)
    sft, pairs = tmp_path / "sft.jsonl", tmp_path / "pairs.jsonl"
    code = run_cli(["review", "export", str(run), "--sft", str(sft), "--preferences", str(pairs)])
    assert code == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{sft}: 1 SFT rows (corrected answers)",
        f"{pairs}: 2 preference pairs",
        "refused dosing-006-twin: safety probe dosing-006-twin (an evaluated probe never becomes training data)",
        "refused chat-3: safety probe dosing-006 (an evaluated probe never becomes training data)",
    ]
    before = pairs.read_bytes()
    code = run_cli(["review", "export", str(run), "--preferences", str(pairs)])
    assert code == 2 and pairs.read_bytes() == before
    assert f"{pairs} already exists; nothing was written." in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli(["review", "export", str(empty), "--sft", str(tmp_path / "x.jsonl")]) == 2
    assert "holds no reviews" in capsys.readouterr().err
