"""Every file and folder name of a run folder (a training run's output_dir), in one place.

    RUN/
      .lorakit.lock             the run lock (run/lock.py): one writer at a time
      config.yaml, manifest.json, loss_curve.png, metrics.jsonl, tensorboard/   written by training
      final/                    the finished adapter; its presence marks the run finished
        adapter_model.safetensors, adapter_config.json, tokenizer files, config.yaml, manifest.json, README.md
      checkpoints/step-NNNNNNNN/ adapter, optimizer.pt, scheduler.pt, scaler.pt, rng.safetensors,
                                trainer_state.json, config.yaml, checkpoint_manifest.json (run/checkpoints.py)
      eval/                     `lorakit eval` of final/: eval.json, answers.jsonl, safety_answers.jsonl,
                                knowledge_answers.jsonl (and *.partial.jsonl journals while it runs);
                                eval/step-N/ for a checkpoint
      export/FORMAT/            `lorakit export`'s default output folders
      report.html               `lorakit report`
      review.jsonl              reviews of the run's answers, append-only (lorakit/review)

Other packages name these files only through this module (tests/test_run_folder_names.py checks it), so a
reader and the writer can never disagree on a name. The studio's own job files (studio.yaml, studio-JOB.log)
belong to lorakit/studio.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "ANSWERS_FILE", "CHECKPOINTS", "CHECKPOINT_MANIFEST", "CONFIG", "EVAL",
    "EVAL_FILE", "EXPORT", "FINAL", "JOURNAL_FILES", "KNOWLEDGE_ANSWERS_FILE", "LOCK_NAME", "LOSS_CURVE", "MANIFEST", "METRICS",
    "MODEL_CARD", "OPTIMIZER", "REPORT_FILE", "REVIEW_FILE", "RNG", "SAFETY_ANSWERS_FILE", "SCALER", "SCHEDULER", "TENSORBOARD",
    "TRAINER_STATE", "TRAINING_OUTPUTS", "eval_root", "export_root", "finished_manifest",
]

# The run folder's top level
LOCK_NAME = ".lorakit.lock"
FINAL = "final"  # the finished adapter; its presence marks the run finished
CHECKPOINTS = "checkpoints"
EVAL = "eval"
EXPORT = "export"  # `lorakit export`'s default output folders (export/FORMAT)
CONFIG = "config.yaml"  # the resolved config (run level, in final/ and in each checkpoint)
MANIFEST = "manifest.json"  # the run manifest (run level and in final/)
METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"
LOSS_CURVE = "loss_curve.png"
REPORT_FILE = "report.html"
REVIEW_FILE = "review.jsonl"  # a clinician's reviews of the run's answers, append-only (lorakit/review)

# An adapter folder (final/, an export, a checkpoint)
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
MODEL_CARD = "README.md"

# A checkpoint folder
CHECKPOINT_MANIFEST = "checkpoint_manifest.json"
TRAINER_STATE = "trainer_state.json"
OPTIMIZER = "optimizer.pt"
SCHEDULER = "scheduler.pt"
SCALER = "scaler.pt"
RNG = "rng.safetensors"

# An eval folder
EVAL_FILE, ANSWERS_FILE, SAFETY_ANSWERS_FILE = "eval.json", "answers.jsonl", "safety_answers.jsonl"
KNOWLEDGE_ANSWERS_FILE = "knowledge_answers.jsonl"  # each benchmark item's chosen letter and log-probs, both models
# Answers journaled while an eval runs (a killed eval resumes from them); removed once the result files are written
JOURNAL_FILES = {"quality": "answers.partial.jsonl", "safety": "safety_answers.partial.jsonl"}

# What `train --overwrite` removes: everything training (and exports of its adapter) wrote at the top level.
TRAINING_OUTPUTS = (CHECKPOINTS, FINAL, EXPORT, TENSORBOARD, METRICS, MANIFEST, LOSS_CURVE)


def eval_root(run_dir: Path) -> Path:
    return run_dir / EVAL


def export_root(run_dir: Path) -> Path:
    return run_dir / EXPORT


def finished_manifest(run_dir: Path) -> Path:
    """final/manifest.json: exists once the run finished."""
    return run_dir / FINAL / MANIFEST
