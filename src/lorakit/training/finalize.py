"""The end of a run: test-split loss, the manifest, the loss curve, and the final adapter folder.

Which weights final/ holds: when early stopping fired, those of the best validation loss (its checkpoint is
kept out of rotation, run/checkpoints.py); otherwise those of the last step. The manifest's metrics say
which (`adapter_step`, `adapter_weights`) next to `best_val_step`, `best_val_loss` and `last_step`, and the
test loss is measured on the weights final/ holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from lorakit.model.adapters import public_model_name
from lorakit.plan.micro_batches import micro_batch_in_use
from lorakit.run.checkpoints import TrainerState, checkpoint_dir, verify_checkpoint
from lorakit.run.final import write_final_files
from lorakit.run.layout import FINAL, LOSS_CURVE
from lorakit.run.manifest import build_manifest, weights_sha256
from lorakit.runtime.atomic_files import atomic_directory
from lorakit.runtime.logging import get_logger
from lorakit.training.data_parallel import shared_split_loss
from lorakit.training.early_stop import EarlyStopping
from lorakit.training.held_out_loss import perplexity, split_loss
from lorakit.training.metrics import ProgressReporter, plot_loss_curve
from lorakit.training.resume_drift import current_environment
from lorakit.training.run_dir import load_adapter_weights
from lorakit.training.sharding import gather_weights

if TYPE_CHECKING:
    from lorakit.training.session import TrainingSession

__all__ = ["TrainResult", "finalize_run"]

log = get_logger("training.finalize")


@dataclass
class TrainResult:
    run_dir: Path
    adapter_dir: Path
    steps: int
    stopped_early: bool
    metrics: dict


def _restore_best_weights(run_dir: Path, session: TrainingSession, stopper: EarlyStopping, last_step: int) -> int:
    """After an early stop, load the best checkpoint's adapter into the model; returns the step final/ ships."""
    best = checkpoint_dir(run_dir, stopper.best_step)
    problem = verify_checkpoint(best) if best.is_dir() else "it was not kept"
    if problem is not None:  # e.g. a run started before best checkpoints were kept, or a damaged disk
        log.warning("final/ holds the last weights (step %d), not the best (step %d): the checkpoint %s is unusable "
                    "(%s)", last_step, stopper.best_step, best, problem)
        return last_step
    load_adapter_weights(best, session.model)
    return stopper.best_step


def finalize_run(run_dir: Path, session: TrainingSession, state: TrainerState, stopper: EarlyStopping,
            stopped_early: bool, reporter: ProgressReporter) -> TrainResult:
    """Test loss, then the final adapter folder (weights, tokenizer, config, manifest) written atomically.

    Rank 0 alone calls this, except under fsdp: there every rank does (loading the best weights, the test loss
    and gathering the weights are collectives) and rank 0 alone writes."""
    cfg = session.config
    sharded = session.sharded
    adapter_step = _restore_best_weights(run_dir, session, stopper, state.step) if stopped_early else state.step
    # After an out-of-memory halving the configured micro-batch no longer fits: measure with the one that did.
    loss_of = partial(shared_split_loss, session.ranks, sharded=True) if sharded else split_loss
    test_loss = loss_of(session.loss_model, session.data.splits.test, batch_size=micro_batch_in_use(state, cfg.training),
                        pad_token_id=session.tokenizer.pad_token_id, autocast_dtype=session.autocast_dtype)
    # The full LoRA weights of a sharded model, gathered to rank 0; None: the model's own.
    weights = gather_weights(session.model) if sharded else None
    if not session.ranks.is_main:
        return TrainResult(run_dir, run_dir / FINAL, state.step, stopped_early, {})
    last_train = next((r["train_loss"] for r in reversed(state.log_history) if "train_loss" in r), None)
    metrics = {
        "steps": state.step,
        "last_step": state.step,
        "stopped_early": stopped_early,
        "final_train_loss": last_train,
        "best_val_loss": None if math.isinf(stopper.best_loss) else stopper.best_loss,
        "best_val_step": stopper.best_step or None,
        "adapter_step": adapter_step,  # the step whose weights final/ holds
        "adapter_weights": "best" if adapter_step != state.step else "last",
        "test_loss": test_loss,
        "test_perplexity": perplexity(test_loss),
    }
    manifest = build_manifest(
        identity=session.identity,
        seed=cfg.seed,
        split_sizes=session.data.splits.sizes(),
        data={"train_files": cfg.data.train_files, "sha256": session.data.data_sha256, "truncated": session.data.truncated,
              "skipped_without_answer_tokens": session.data.without_targets, "source_urls": session.data.source_urls,
              **session.data.notes},
        metrics=metrics,
        settings={"quantized_4bit": session.quantized, "dtype": str(session.dtype).removeprefix("torch."),
                  "device": session.device.type, "gpu": current_environment(session.device)["gpu"],
                  "allow_phi": cfg.data.allow_phi, "skip_invalid": cfg.data.skip_invalid,
                  "micro_batch_size": micro_batch_in_use(state, cfg.training),
                  "gradient_accumulation_steps": state.gradient_accumulation_steps or cfg.training.gradient_accumulation_steps},
    )
    # adapter_config.json names the public model (portable); the manifest also keeps where it was on this machine.
    manifest["resumes"] = state.resumes  # settings and environment that changed at a resume (resume_drift.py)
    manifest["base_model"].update(public_name=public_model_name(session.source), local_path=str(session.source.directory),
                                  weights_sha256=weights_sha256(session.source.directory))
    adapter_dir = run_dir / FINAL
    # final/ is renamed into place last: its presence is what marks the run finished (a resume after a crash
    # before it rewrites the run-level copies).
    plot_loss_curve(state.log_history, run_dir / LOSS_CURVE)
    with atomic_directory(adapter_dir) as staging:
        # Only the trained adapter: DPO from a starting adapter also holds its frozen reference copy
        # (training/preference_loss.py), which peft would otherwise save as final/reference/.
        session.model.save_pretrained(staging, safe_serialization=True, save_embedding_layers=False,  # no Hub lookup
                                      state_dict=weights, selected_adapters=[session.model.active_adapter])
        session.tokenizer.save_pretrained(staging)
        write_final_files(run_dir, staging, cfg, manifest)
    if test_loss is not None:
        reporter.message(f"test loss {test_loss:.4f} (perplexity {perplexity(test_loss):.2f})")
    if adapter_step != state.step:
        reporter.message(f"final/ holds the weights of step {adapter_step} (best validation loss "
                         f"{stopper.best_loss:.4f}), not those of the last step {state.step}")
    reporter.message(f"adapter saved to {adapter_dir}")
    return TrainResult(run_dir, adapter_dir, state.step, stopped_early, metrics)
