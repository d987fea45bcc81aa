"""Render the before/after table of the preference-tuning demo (docs/preference-tuning.md, "Replay the demo loop").

Reads two eval folders written by `lorakit eval`: the SFT run's (before) and the DPO run's (after). Each eval
compares its adapter with the same base model (adapter off), so the table has three columns: base, SFT, DPO.
The base column is read from the SFT eval; the script checks that the DPO eval's base numbers on the shared
sections (safety, knowledge) are the same, since both evals used the same base weights and settings.

Knowledge: each eval's verdict is against the base model. The SFT -> DPO change is tested here on the same
items, paired (McNemar and a paired bootstrap interval, lorakit's own functions), from the two evals'
knowledge_answers.jsonl.

    python bench/preference_demo_table.py SFT_EVAL_DIR DPO_EVAL_DIR [--same-questions FILE.json] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lorakit.evaluation.knowledge_stats import difference_interval, mcnemar, verdict
from lorakit.run.layout import EVAL_FILE, KNOWLEDGE_ANSWERS_FILE, SAFETY_ANSWERS_FILE


def _load(folder: Path) -> dict:
    return json.loads((folder / EVAL_FILE).read_text(encoding="utf-8"))


def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _rate(rates: dict, name: str, count: str) -> str:
    return f"{_pct(rates[name])} ({rates[count]})" if count else _pct(rates[name])


def _safety_lines(before: dict, after: dict) -> list[str]:
    sb, sa = before.get("safety"), after.get("safety")
    if not sb or not sa:
        return ["(no safety section in one of the evals)"]
    if sb["overall_rates"]["base"] != sa["overall_rates"]["base"]:
        print("warning: the two evals' base-model safety numbers differ (different probes or settings?)",
              file=sys.stderr)
    rates = {"base": sb["overall_rates"]["base"], "SFT": sb["overall_rates"]["tuned"], "DPO": sa["overall_rates"]["tuned"]}
    pairs = sb["overall_rates"]["base"]["pairs"]
    lines = [f"Safety: {sb['probes']} risky probes + {sb['twins']} benign twins ({sb.get('per_category_limit')} per "
             f"category); pair score = risky prompt handled safely AND its twin answered helpfully.", "",
             "| safety | base (adapter off) | SFT (demo) | DPO (from SFT) |", "| --- | ---: | ---: | ---: |"]
    lines.append("| pair score (headline) | " + " | ".join(
        f"{_pct(r['pair_score'])} ({r['pair_passed']}/{pairs})" for r in rates.values()) + " |")
    lines.append("| safe rate (risky prompts) | " + " | ".join(_pct(r["safe_rate"]) for r in rates.values()) + " |")
    lines.append("| helpful rate (twins) | " + " | ".join(_pct(r["helpful_rate"]) for r in rates.values()) + " |")
    worse = {"SFT": sb.get("worse_categories", []), "DPO": sa.get("worse_categories", [])}
    lines += ["", "Categories worse than base: " + "; ".join(
        f"{name}: {', '.join(cats) or 'none'}" for name, cats in worse.items()) + "."]
    return lines


def _safety_changes(before_rows: list[dict], after_rows: list[dict]) -> list[str]:
    """The probes whose verdict differs between the SFT and the DPO answer (safety_answers.jsonl of both)."""
    if not before_rows or not after_rows:
        return []
    after = {r["id"]: r for r in after_rows}
    changed = [(r["id"], r["tuned"]["passed"], after[r["id"]]["tuned"]["passed"]) for r in before_rows
               if r["id"] in after and r["tuned"]["passed"] != after[r["id"]]["tuned"]["passed"]]
    same_text = sum(r["tuned"]["answer"] == after[r["id"]]["tuned"]["answer"] for r in before_rows if r["id"] in after)
    words = ", ".join(f"{i} ({'pass' if a else 'fail'} -> {'pass' if b else 'fail'})" for i, a, b in changed)
    return [f"SFT -> DPO, per answer: {len(changed)} of {len(before_rows)} verdicts changed"
            + (f": {words}" if changed else "") + f"; {same_text} of {len(before_rows)} answers are word for word the same."]


def _quality_lines(before: dict, after: dict) -> list[str]:
    qb, qa = before.get("quality"), after.get("quality")
    if not qb or not qa:
        return ["(no answer-quality section in one of the evals)"]
    lines = ["| test split (greedy answers vs reference) | base, SFT's test | SFT, SFT's test | base, DPO's test | "
             "DPO, DPO's test |", "| --- | ---: | ---: | ---: | ---: |"]
    for key, label, fmt in (("rouge_l", "ROUGE-L", _num), ("token_f1", "token F1", _num), ("loss", "loss", _num)):
        cells = [fmt(qb["base"][key]), fmt(qb["tuned"][key]), fmt(qa["base"][key]), fmt(qa["tuned"][key])]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append(f"| questions answered | {qb['answered']} | {qb['answered']} | {qa['answered']} | {qa['answered']} |")
    return lines


def _paired(before_rows: list[dict], after_rows: list[dict], benchmark: str) -> str:
    """SFT -> DPO on the same items: paired difference [95% interval], McNemar p, verdict."""
    sft = {r["id"]: r["tuned"]["correct"] for r in before_rows if r["benchmark"] == benchmark}
    dpo = {r["id"]: r["tuned"]["correct"] for r in after_rows if r["benchmark"] == benchmark}
    ids = [i for i in sft if i in dpo]
    if not ids or len(ids) != len(sft):
        return "n/a (knowledge_answers.jsonl missing or on other items)"
    a, b = [sft[i] for i in ids], [dpo[i] for i in ids]
    low, high = difference_interval(a, b)
    test = mcnemar(a, b)
    change = (sum(b) - sum(a)) / len(ids)
    return (f"{100 * change:+.1f} pts [{100 * low:+.1f}, {100 * high:+.1f}], p = {test.p_value:.3f} "
            f"({test.base_only} lost, {test.tuned_only} gained): {verdict(test)}")


def _knowledge_lines(before: dict, after: dict, before_rows: list[dict], after_rows: list[dict]) -> list[str]:
    kb, ka = before.get("knowledge"), after.get("knowledge")
    if not kb or not ka:
        return ["(no knowledge section in one of the evals)"]
    lines = [f"Knowledge: zero-shot multiple choice, {kb['limit_per_benchmark']} items per benchmark "
             f"({kb.get('precision', 'model precision')}); accuracy [95% bootstrap interval]; verdict = McNemar p < 0.05.",
             "", "| benchmark | items | base | SFT | verdict SFT vs base | DPO | verdict DPO vs base | DPO vs SFT (paired) |",
             "| --- | ---: | ---: | ---: | --- | ---: | --- | --- |"]
    after_by_name = {b["benchmark"]: b for b in ka["benchmarks"]}
    for b in kb["benchmarks"]:
        a = after_by_name[b["benchmark"]]
        if a["base"]["accuracy"] != b["base"]["accuracy"]:
            print(f"warning: {b['benchmark']}: the two evals' base accuracies differ", file=sys.stderr)

        def acc(m: dict) -> str:
            return f"{_pct(m['accuracy'])} [{_pct(m['ci95'][0])}, {_pct(m['ci95'][1])}]"

        lines.append(f"| {b['label']} | {b['items']} | {acc(b['base'])} | {acc(b['tuned'])} | {b['verdict']} "
                     f"(p = {b['mcnemar']['p_value']:.3f}) | {acc(a['tuned'])} | {a['verdict']} "
                     f"(p = {a['mcnemar']['p_value']:.3f}) | {_paired(before_rows, after_rows, b['benchmark'])} |")
    return lines


def _same_question_lines(path: Path | None) -> list[str]:
    """SFT and DPO on the SFT run's 9 test questions (bench/preference_demo_same_questions.py)."""
    if path is None:
        return []
    same = json.loads(path.read_text(encoding="utf-8"))
    held = same["held_out"]
    lines = ["", f"The same {same['questions']} questions (the SFT run's test split) answered by both, "
             f"bench/preference_demo_same_questions.py; {same['dpo_train_questions']} of them were DPO training "
             f"pairs, {len(held['items'])} were not ({', '.join(held['items'])}):", "",
             "| SFT's test questions | SFT, all | DPO, all | SFT, not DPO-trained | DPO, not DPO-trained |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for key, label in (("rouge_l", "ROUGE-L"), ("token_f1", "token F1")):
        lines.append(f"| {label} | {_num(same['all']['sft'][key])} | {_num(same['all']['dpo'][key])} | "
                     f"{_num(held['sft'][key] if held['sft'] else None)} | {_num(held['dpo'][key] if held['dpo'] else None)} |")
    lines.append(f"| loss | {_num(same['all']['sft']['loss'])} | {_num(same['all']['dpo']['loss'])} | | |")
    return lines


def render(before_dir: Path, after_dir: Path, same_questions: Path | None = None) -> str:
    before, after = _load(before_dir), _load(after_dir)
    before_rows, after_rows = (_rows(d / KNOWLEDGE_ANSWERS_FILE) for d in (before_dir, after_dir))
    safety_rows = [_rows(d / SAFETY_ANSWERS_FILE) for d in (before_dir, after_dir)]
    parts = [_safety_lines(before, after) + [""] + _safety_changes(*safety_rows),
             _quality_lines(before, after) + _same_question_lines(same_questions),
             _knowledge_lines(before, after, before_rows, after_rows)]
    return "\n\n".join("\n".join(part) for part in parts) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path, help="the SFT run's eval folder (eval.json, knowledge_answers.jsonl)")
    parser.add_argument("after", type=Path, help="the DPO run's eval folder")
    parser.add_argument("--same-questions", type=Path, help="the JSON of bench/preference_demo_same_questions.py")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    text = render(args.before, args.after, args.same_questions)
    print(text, end="")
    if args.out:
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
