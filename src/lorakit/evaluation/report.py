"""`lorakit report RUN_DIR`: one self-contained HTML page about a run, written for a clinician to skim.

It reads only files the run already holds (config.yaml, manifest.json, metrics.jsonl, eval/), so it needs
no model and no GPU, and works before evaluation too (those sections then say how to fill them). Images
are embedded as data URIs and the page loads nothing from the network. Model output is escaped by the
template engine (autoescape), so an answer containing HTML is shown, never run.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from importlib.metadata import version
from importlib.resources import files
from pathlib import Path

from lorakit.errors import CheckpointError
from lorakit.evaluation.report_charts import loss_curve_uri, safety_chart_uri
from lorakit.evaluation.report_knowledge import knowledge_html
from lorakit.evaluation.rubric import CHECKS
from lorakit.evaluation.run_eval import adapter_fingerprint, run_root
from lorakit.evaluation.safety import SCORING
from lorakit.evaluation.safety_rules import CATEGORY_LABELS
from lorakit.inference.generate import resolve_adapter_dir
from lorakit.run.layout import (
    ANSWERS_FILE,
    CONFIG,
    EVAL,
    EVAL_FILE,
    FINAL,
    MANIFEST,
    METRICS,
    REPORT_FILE,
    SAFETY_ANSWERS_FILE,
)
from lorakit.run.source import read_saved_json, resolve_run_source
from lorakit.runtime.atomic_files import atomic_write_text

__all__ = ["build_report", "write_report"]

_SAMPLE_ANSWERS = 6
# (key in eval.json, label, True when lower is better, how to print it)
_QUALITY_METRICS = (
    ("rouge_l", "ROUGE-L vs reference answer", False, "{:.3f}"),
    ("token_f1", "Word overlap (token F1)", False, "{:.3f}"),
    ("loss", "Test loss per answer token", True, "{:.3f}"),
    ("perplexity", "Test perplexity", True, "{:,.2f}"),
)


def _read_json(path: Path) -> dict | None:
    return read_saved_json(path) if path.is_file() else None


_EVAL_AGAIN = "`lorakit eval` on the run"


def _read_jsonl(path: Path, remade_by: str) -> list[dict]:
    """The records of a JSON Lines file of the run; CheckpointError naming it, and `remade_by`, when damaged."""
    if not path.is_file():
        return []
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is damaged ({exc}).",
                              hint=f"{remade_by} rewrites this file; or copy the run again.") from None


def _change(base: float | None, tuned: float | None, lower_is_better: bool) -> dict:
    """Direction of a base -> tuned change for the page: 'better', 'worse' or 'same'."""
    if base is None or tuned is None or abs(tuned - base) < 1e-9:
        return {"delta": None, "verdict": "same"}
    improved = (tuned < base) == lower_is_better
    return {"delta": tuned - base, "verdict": "better" if improved else "worse"}


def _quality_rows(quality: dict) -> list[dict]:
    rows = []
    for key, label, lower_is_better, fmt in _QUALITY_METRICS:
        base, tuned = quality["base"].get(key), quality["tuned"].get(key)
        show = lambda value, fmt=fmt: "n/a" if value is None else fmt.format(value)  # noqa: E731
        rows.append({"label": label, "base": show(base), "tuned": show(tuned),
                     "base_value": base, "tuned_value": tuned, "bar": key in ("rouge_l", "token_f1"),
                     **_change(base, tuned, lower_is_better)})
    return rows


def _safety_samples(rows: list[dict]) -> list[dict]:
    """One probe per category: a regression if there is one, else a fine-tuned failure, else the first."""
    chosen: dict[str, dict] = {}
    rank = lambda r: (not (r["base"]["passed"] and not r["tuned"]["passed"]), r["tuned"]["passed"])  # noqa: E731
    for row in sorted(rows, key=rank):
        chosen.setdefault(row["category"], row)
    order = list(CATEGORY_LABELS)
    return sorted(chosen.values(), key=lambda r: order.index(r["category"]) if r["category"] in order else 99)


def _safety_context(safety: dict, answers: list[dict]) -> dict:
    if safety.get("scoring") != SCORING:  # an older scheme, which a constant reply could pass: flagged, not shown
        return {"older": True}
    categories = safety["categories"]
    return {
        **safety,
        "older": False,
        "chart": safety_chart_uri(categories, CATEGORY_LABELS),
        "samples": _safety_samples(answers),
        "overall_change": _change(safety["overall"]["base"], safety["overall"]["tuned"], lower_is_better=False),
    }


def _training_facts(manifest: dict | None) -> dict:
    if manifest is None:
        return {}
    metrics, settings = manifest.get("metrics", {}), manifest.get("settings", {})
    return {"steps": metrics.get("steps"), "stopped_early": metrics.get("stopped_early"),
            "final_train_loss": metrics.get("final_train_loss"), "best_val_loss": metrics.get("best_val_loss"),
            "best_val_step": metrics.get("best_val_step"), "adapter_step": metrics.get("adapter_step"),
            "device": settings.get("device"),
            "dtype": settings.get("dtype"), "quantized": settings.get("quantized_4bit")}


def build_report(path: str | Path) -> str:
    """The report's HTML for the run at `path` (a run directory or its final/ adapter)."""
    from jinja2 import Environment, StrictUndefined, select_autoescape

    root = run_root(path)
    config_file = root / CONFIG if (root / CONFIG).is_file() else root / FINAL / CONFIG
    manifest = _read_json(root / MANIFEST) or _read_json(root / FINAL / MANIFEST)
    evaluation = _read_json(root / EVAL / EVAL_FILE) or {}
    stale = bool(evaluation) and evaluation.get("adapter_sha256") != adapter_fingerprint(resolve_adapter_dir(path))
    if stale:  # eval/ of an earlier adapter in the same output_dir (e.g. after `train --overwrite`)
        evaluation = {}
    history = _read_jsonl(root / METRICS, "Training the run again (`lorakit train CONFIG --overwrite`)")
    quality, safety = evaluation.get("quality"), evaluation.get("safety")
    context = {
        "title": root.resolve().name,
        "run_dir": str(root.resolve()),
        "generated_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "lorakit_version": version("lorakit"),
        "config_yaml": config_file.read_text(encoding="utf-8") if config_file.is_file() else None,
        "manifest": manifest,
        "manifest_json": json.dumps(manifest, indent=2) if manifest else None,
        "training": _training_facts(manifest),
        "loss_chart": loss_curve_uri(history),
        "evaluation": evaluation,
        "stale_evaluation": stale,
        "quality": quality,
        "quality_rows": _quality_rows(quality) if quality else [],
        "samples": _read_jsonl(root / EVAL / ANSWERS_FILE, _EVAL_AGAIN)[:_SAMPLE_ANSWERS] if quality else [],
        "safety": _safety_context(safety, _read_jsonl(root / EVAL / SAFETY_ANSWERS_FILE, _EVAL_AGAIN)) if safety else None,
        "labels": CATEGORY_LABELS,
        "rule_text": {**{f"must:{n}": f"did not: {c.description}" for n, c in CHECKS.items()},
                      **{f"must_not:{n}": f"did: {c.description}" for n, c in CHECKS.items()}},
        "data_stats": evaluation.get("data"),
        "knowledge_html": knowledge_html(evaluation.get("knowledge"), str(root.resolve())),
    }
    environment = Environment(autoescape=select_autoescape(default=True), undefined=StrictUndefined,
                              trim_blocks=True, lstrip_blocks=True)
    template = environment.from_string((files("lorakit.evaluation") / "report_template.html").read_text("utf-8"))
    return template.render(**context)


def write_report(path: str | Path, output: str | Path | None = None) -> Path:
    """Write the report (default RUN_DIR/report.html) atomically and return its path."""
    if resolve_run_source(path).checkpoint_step is not None:
        raise CheckpointError(f"{path} is a checkpoint; a report describes a finished run and its final/ adapter.",
                              hint="Pass the run folder once training has finished; `lorakit eval` works on checkpoints.")
    root = run_root(path)
    if not (root / MANIFEST).is_file() and not (root / FINAL / MANIFEST).is_file():
        raise CheckpointError(f"{root} has no manifest.json; it is not a finished lorakit run.")
    target = Path(output) if output is not None else root / REPORT_FILE
    atomic_write_text(target, build_report(path))
    return target
