"""`lorakit eval --knowledge`: base vs fine-tuned on the shipped benchmarks, with intervals and a verdict.

Each benchmark's section carries its controls next to the models' numbers: chance (a uniform random guess),
always answering "A", and the best constant letter (PubMedQA's majority answer "yes" alone scores 55%), so a
reader sees at once whether a model beats a strategy that ignores the question.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

from lorakit.evaluation.knowledge import ScoredItem, prompt_ids, score_items
from lorakit.evaluation.knowledge_items import BENCHMARK_LABELS, BENCHMARKS, LETTERS, KnowledgeItem, select_items
from lorakit.evaluation.knowledge_model import Precision, scoring_model
from lorakit.evaluation.knowledge_stats import ALPHA, accuracy_interval, difference_interval, mcnemar, verdict

__all__ = ["MODELS", "controls", "summarize_benchmark", "evaluate_knowledge"]

MODELS = ("base", "tuned")
Progress = Callable[[str, int, int], None]


def controls(items: Sequence[KnowledgeItem]) -> dict:
    """Accuracy of strategies that never read the question: chance, always "A", the best constant letter.

    >>> from lorakit.evaluation.knowledge_items import KnowledgeItem as K
    >>> controls([K("1", "b", "q", ("x", "y"), 0), K("2", "b", "q", ("x", "y"), 1), K("3", "b", "q", ("x", "y"), 1)])
    {'chance': 0.5, 'always_a': 0.3333333333333333, 'best_constant': 0.6666666666666666, 'best_constant_letter': 'B'}
    """
    answers = Counter(item.answer for item in items)
    letter, count = max(sorted(answers.items()), key=lambda pair: pair[1])
    return {"chance": sum(1 / len(item.choices) for item in items) / len(items),
            "always_a": answers[0] / len(items), "best_constant": count / len(items),
            "best_constant_letter": LETTERS[letter]}


def _model_numbers(correct: list[bool]) -> dict:
    low, high = accuracy_interval(correct)
    return {"correct": sum(correct), "accuracy": sum(correct) / len(correct), "ci95": [low, high]}


def summarize_benchmark(name: str, base: Sequence[ScoredItem], tuned: Sequence[ScoredItem]) -> dict:
    """Accuracy with 95% intervals for both models, the paired difference, McNemar and the verdict."""
    assert [s.item.id for s in base] == [s.item.id for s in tuned], "both models answer the same items, in order"
    items = [s.item for s in base]
    base_correct, tuned_correct = [s.correct for s in base], [s.correct for s in tuned]
    test = mcnemar(base_correct, tuned_correct)
    low, high = difference_interval(base_correct, tuned_correct)
    subjects = sorted({item.subject for item in items if item.subject})
    return {
        "benchmark": name,
        "label": BENCHMARK_LABELS[name],
        "items": len(items),
        "base": _model_numbers(base_correct),
        "tuned": _model_numbers(tuned_correct),
        "difference": {"value": (sum(tuned_correct) - sum(base_correct)) / len(items), "ci95": [low, high]},
        "mcnemar": test.to_json(),
        "verdict": verdict(test),
        "controls": controls(items),
        "subjects": {subject: _subject_counts(subject, base, tuned) for subject in subjects},
    }


def _subject_counts(subject: str, base: Sequence[ScoredItem], tuned: Sequence[ScoredItem]) -> dict:
    """Items of one MMLU subject and how many of them each model got right (no intervals: too few items)."""
    mine = [i for i, s in enumerate(base) if s.item.subject == subject]
    return {"items": len(mine), "base": sum(base[i].correct for i in mine), "tuned": sum(tuned[i].correct for i in mine)}


def _row(base: ScoredItem, tuned: ScoredItem) -> dict:
    item = base.item
    return {"id": item.id, "benchmark": item.benchmark, "subject": item.subject, "answer": LETTERS[item.answer],
            **{which: {"chosen": LETTERS[s.chosen], "correct": s.correct,
                       "logprobs": [round(v, 4) for v in s.logprobs]}
               for which, s in (("base", base), ("tuned", tuned))}}


def evaluate_knowledge(run, limit: int | None, progress: Progress,
                       precision: Precision = "model") -> tuple[dict, list[dict]]:
    """Score every (or `limit` per benchmark) shipped item with the base and the tuned model.

    The tuned model scores with its adapter merged into a copy of the weights, and `precision` 'bfloat16' scores
    both models in bfloat16 (faster on CPUs with AMX, not the same numbers): evaluation/knowledge_model.py."""
    chosen = {name: select_items(name, limit) for name in BENCHMARKS}
    prompts = {name: prompt_ids(chosen[name], run.tokenizer, run.system_prompt) for name in BENCHMARKS}
    total, done = 2 * sum(len(items) for items in chosen.values()), 0
    progress("knowledge", 0, total)

    def advance(count: int) -> None:
        nonlocal done
        done += count
        progress("knowledge", done, total)

    scored: dict[tuple[str, str], list[ScoredItem]] = {}
    for which in MODELS:
        with scoring_model(run.model, which, precision) as model:
            for name in BENCHMARKS:  # one benchmark at a time: its prompts share a longer prefix
                scored[which, name] = score_items(model, run.tokenizer, chosen[name], prompts[name], run.device,
                                                  advance)
    benchmarks = [summarize_benchmark(name, scored["base", name], scored["tuned", name]) for name in BENCHMARKS]
    rows = [_row(b, t) for name in BENCHMARKS for b, t in zip(scored["base", name], scored["tuned", name])]
    section = {"method": "zero-shot; each option's letter scored by its log-likelihood after the chat prompt "
                         "(run's chat template and system prompt)",
               "precision": _precision_text(run.model, precision),
               "limit_per_benchmark": limit, "alpha": ALPHA, "benchmarks": benchmarks,
               "lost": [b["benchmark"] for b in benchmarks if b["verdict"] == "lost"]}
    return section, rows



def _precision_text(model, precision: Precision) -> str:
    """What eval.json records: 'float32' (the model's own dtype, the default) or 'bfloat16 (asked for)'."""
    if precision == "bfloat16":
        return "bfloat16 (asked for; predictions can differ from the model's own precision)"
    return str(next(model.parameters()).dtype).removeprefix("torch.")
