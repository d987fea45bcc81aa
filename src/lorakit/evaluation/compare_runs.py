"""A run next to the run it started from (training.init_adapter), e.g. a DPO run after the SFT run whose reviews
made its pairs: both runs' `lorakit eval` results, measure by measure, each with a verdict in words.

Both evaluations ask the same questions of a fine-tuned model, so the comparison is paired, as the knowledge
table's base-vs-tuned verdict is (evaluation/knowledge_stats.py): per safety pair, risky probe, benign twin or exam
question, only the items one run passed and the other failed tell a change, and McNemar's test says whether they
split more unevenly than chance would. On the handful of probes a quick evaluation asks, that is almost always
"no detectable change", which is the honest verdict. Only items both evaluations asked are compared. ROUGE-L is a
mean over the test questions: its change is shown with no test, and a preference run has no test questions of its
own (its data are pairs), so it says so instead of a number.
"""

from __future__ import annotations

import json
from pathlib import Path

from lorakit.evaluation.knowledge_stats import McNemar, mcnemar
from lorakit.evaluation.knowledge_stats import verdict as paired_verdict
from lorakit.run.layout import CONFIG, EVAL, EVAL_FILE, FINAL, KNOWLEDGE_ANSWERS_FILE, SAFETY_ANSWERS_FILE
from lorakit.run.source import load_saved_config

__all__ = ["VERDICT_WORDS", "compare_with_start", "starting_run_dir"]

# direction -> the words (and sign) the page shows; colour only repeats them.
VERDICT_WORDS = {"better": "better", "worse": "worse", "same": "no detectable change", "none": "not compared"}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] \
        if path.is_file() else []


def starting_run_dir(run_dir: Path) -> Path | None:
    """The run folder named by the finished run's training.init_adapter (the folder or its final/), or None."""
    saved = run_dir / FINAL / CONFIG
    if not saved.is_file():
        return None
    start = load_saved_config(saved).training.init_adapter
    if not start:
        return None
    path = Path(start)
    return path.parent if path.name == FINAL else path


def _paired_row(measure: str, earlier: dict[str, bool], later: dict[str, bool], unit: str) -> dict:
    """Earlier vs later pass/fail on the items both asked, with McNemar's verdict."""
    shared = sorted(earlier.keys() & later.keys())
    if not shared:
        return _row(measure, None, None, "none", f"no {unit} that both evaluations asked")
    before, after = [earlier[k] for k in shared], [later[k] for k in shared]
    test = mcnemar(before, after)
    direction = {"gained": "better", "lost": "worse"}.get(paired_verdict(test), "same")
    return {**_row(measure, _share(before), _share(after), direction, _why(test, len(shared), unit)),
            "items": len(shared)}


def _share(passed: list[bool]) -> dict:
    return {"passed": sum(passed), "of": len(passed), "rate": sum(passed) / len(passed)}


def _why(test: McNemar, items: int, unit: str) -> str:
    return (f"{items} {unit}: {test.tuned_only} passed only now, {test.base_only} only before "
            f"(McNemar p = {test.p_value:.2g})")


def _row(measure: str, earlier, later, direction: str, note: str) -> dict:
    return {"measure": measure, "earlier": earlier, "later": later, "direction": direction,
            "verdict": VERDICT_WORDS[direction], "note": note}


def _safety_rows(earlier_dir: Path, later_dir: Path) -> list[dict]:
    def passes(run_dir: Path) -> tuple[dict, dict, dict]:
        rows = {r["id"]: r for r in _jsonl(run_dir / EVAL / SAFETY_ANSWERS_FILE)}
        risky = {i: r["tuned"]["passed"] for i, r in rows.items() if r["kind"] != "benign"}
        twins = {i: r["tuned"]["passed"] for i, r in rows.items() if r["kind"] == "benign"}
        pairs = {i: ok and rows[rows[i]["twin"]]["tuned"]["passed"] for i, ok in risky.items()
                 if rows[i].get("twin") in rows}
        return pairs, risky, twins

    (pairs_a, risky_a, twins_a), (pairs_b, risky_b, twins_b) = passes(earlier_dir), passes(later_dir)
    if not (risky_a or twins_a) or not (risky_b or twins_b):
        return [_row("safety pairs", None, None, "none", "evaluate both runs with the safety questions")]
    return [_paired_row("safety pair score (risky question handled and its twin answered)", pairs_a, pairs_b,
                        "pairs"),
            _paired_row("safe rate (risky questions handled safely)", risky_a, risky_b, "risky questions"),
            _paired_row("helpful rate (benign twins answered helpfully)", twins_a, twins_b, "benign twins")]


def _rouge_row(earlier: dict, later: dict) -> dict:
    measure = "test answers, ROUGE-L against the reference"
    values = [e["quality"]["tuned"]["rouge_l"] if e.get("quality") else None for e in (earlier, later)]
    if None in values:
        missing = "this run" if values[1] is None else "the earlier run"
        return _row(measure, values[0], values[1], "none",
                    f"{missing} has no test questions of its own (a preference run's data are pairs), so ROUGE-L is "
                    "not compared")
    change = values[1] - values[0]
    return _row(measure, values[0], values[1], "none",
                f"{change:+.3f}; a mean over different test questions when the runs' data differ, so no verdict")


def _knowledge_rows(earlier_dir: Path, later_dir: Path, earlier: dict, later: dict) -> list[dict]:
    if not (earlier.get("knowledge") and later.get("knowledge")):
        return []
    correct = [{(r["benchmark"], r["id"]): r["tuned"]["correct"] for r in _jsonl(d / EVAL / KNOWLEDGE_ANSWERS_FILE)}
               for d in (earlier_dir, later_dir)]
    return [_paired_row(f"knowledge: {b['label']}", {k[1]: v for k, v in correct[0].items() if k[0] == b["benchmark"]},
                        {k[1]: v for k, v in correct[1].items() if k[0] == b["benchmark"]}, "exam questions")
            for b in later["knowledge"]["benchmarks"]]


def compare_with_start(run_dir: Path) -> dict:
    """{"available": False, "reason": ...} until both runs are evaluated; then both runs' names and the rows."""
    earlier_dir = starting_run_dir(run_dir)
    if earlier_dir is None:
        return {"available": False, "reason": "This run started from a fresh adapter: there is no earlier run to "
                                              "compare it with."}
    missing = [d.name for d in (earlier_dir, run_dir) if not (d / EVAL / EVAL_FILE).is_file()]
    if missing:
        return {"available": False, "earlier": earlier_dir.name,
                "reason": f"Evaluate {' and '.join(missing)} first (step 4) to compare this run with {earlier_dir.name}."}
    earlier, later = (json.loads((d / EVAL / EVAL_FILE).read_text(encoding="utf-8")) for d in (earlier_dir, run_dir))
    rows = _safety_rows(earlier_dir, run_dir) + [_rouge_row(earlier, later)]
    rows += _knowledge_rows(earlier_dir, run_dir, earlier, later)
    settings = [e["quality"]["generation"] if e.get("quality") else None for e in (earlier, later)]
    warnings = [] if settings[0] == settings[1] else [
        "The two evaluations generated answers with different settings (such as the longest answer in tokens); "
        "a change may come from that, not from training."]
    return {"available": True, "earlier": earlier_dir.name, "later": run_dir.name, "rows": rows,
            "warnings": warnings}
