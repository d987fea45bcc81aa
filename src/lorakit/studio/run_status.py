"""What a run folder says about a run, for the page: the config, the training curve, progress, ETA, the eval
results and the exports. Read from the files `lorakit train`, `eval` and `export` write; nothing else."""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from lorakit.run.checkpoints import list_checkpoints
from lorakit.run.layout import CONFIG, EVAL, EVAL_FILE, EXPORT, FINAL, METRICS, REPORT_FILE, REVIEW_FILE
from lorakit.studio.jobs import JOBS, job_status
from lorakit.studio.run_config import STUDIO_CONFIG

__all__ = ["read_metrics", "training_progress", "run_summary", "eval_results"]


def read_metrics(run_dir: Path) -> list[dict]:
    """metrics.jsonl, skipping a last line that is still being written."""
    path = run_dir / METRICS
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def _saved_config(run_dir: Path) -> dict | None:
    """The finished run's resolved config, else the one step 2 saved; None for neither."""
    for path in (run_dir / FINAL / CONFIG, run_dir / STUDIO_CONFIG):
        if path.is_file():
            return yaml.safe_load(path.read_text())
    return None


def _max_steps(run_dir: Path) -> int | None:
    config = _saved_config(run_dir)
    return int(config["training"]["max_steps"]) if config else None


def training_progress(run_dir: Path, metrics: list[dict], started: float | None, running: bool) -> dict:
    """Step, tokens/s (the last logged window) and an ETA from this job's own pace since it started."""
    step = metrics[-1]["step"] if metrics else 0
    max_steps = _max_steps(run_dir)
    speeds = [r["tokens_per_second"] for r in metrics if "tokens_per_second" in r]
    eta_s = None
    if running and started is not None and metrics and max_steps:
        first_write = (run_dir / METRICS).stat().st_mtime
        done_steps = step - metrics[0]["step"] + 1
        elapsed = max(time.time() - started, first_write - started)
        eta_s = round(elapsed / max(done_steps, 1) * (max_steps - step)) if step < max_steps else 0
    return {"step": step, "max_steps": max_steps, "tokens_per_second": speeds[-1] if speeds else None, "eta_s": eta_s}


def _checkpoints(run_dir: Path) -> list[str]:
    return [p.name for p in list_checkpoints(run_dir)]  # completed ones, oldest first, as `train --resume` sees them


def _exports(run_dir: Path) -> list[str]:
    folder = run_dir / EXPORT
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")) if folder.is_dir() else []


def _run_name(adapter: str | None) -> str | None:
    """The run named by training.init_adapter (a run folder or its final/)."""
    if not adapter:
        return None
    path = Path(adapter)
    return path.parent.name if path.name == FINAL else path.name


def run_summary(run_dir: Path) -> dict:
    jobs = {job: job_status(run_dir, job) for job in JOBS}
    metrics = read_metrics(run_dir)
    config_path = run_dir / STUDIO_CONFIG
    train = jobs["train"]
    config = _saved_config(run_dir) or {}
    training = config.get("training") or {}
    return {
        "run": run_dir.name,
        "run_dir": str(run_dir),
        "config_path": str(config_path) if config_path.is_file() else None,
        "config_yaml": config_path.read_text() if config_path.is_file() else None,
        "finished": (run_dir / FINAL).is_dir(),
        "checkpoints": _checkpoints(run_dir),
        "metrics": metrics,
        "progress": training_progress(run_dir, metrics, train.started, train.state == "running"),
        "jobs": {job: status.to_json() for job, status in jobs.items()},
        "has_eval": (run_dir / EVAL / EVAL_FILE).is_file(),
        "has_report": (run_dir / REPORT_FILE).is_file(),
        "exports": _exports(run_dir),
        "model": (config.get("model") or {}).get("name"),
        "method": training.get("method", "sft"),
        "starts_from": _run_name(training.get("init_adapter")),
        "has_reviews": (run_dir / REVIEW_FILE).is_file(),
    }


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def eval_results(run_dir: Path) -> dict | None:
    """eval/eval.json plus the safety answers side by side (eval/safety_answers.jsonl), as `lorakit eval` wrote them."""
    from lorakit.evaluation.run_eval import eval_dir
    from lorakit.evaluation.safety_rules import CATEGORY_LABELS
    from lorakit.run.layout import SAFETY_ANSWERS_FILE

    if not (run_dir / FINAL).is_dir():
        return None
    folder = eval_dir(run_dir)
    if not (folder / EVAL_FILE).is_file():
        return None
    return {"eval": json.loads((folder / EVAL_FILE).read_text()),
            "safety_answers": _jsonl(folder / SAFETY_ANSWERS_FILE),
            "category_labels": CATEGORY_LABELS}
