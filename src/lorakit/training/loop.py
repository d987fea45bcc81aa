"""The training recipe, top to bottom: lock the run folder -> build the session (training/session.py) ->
(resume) -> Trainer.fit (training/trainer.py) -> final adapter + manifest.

Under torchrun / `accelerate launch` every process runs it; rank 0 alone owns the run folder (lock,
checkpoints, metrics, final/) and reports progress (training/data_parallel.py).
"""

from __future__ import annotations

from pathlib import Path

from lorakit.config import RunConfig
from lorakit.plan.micro_batches import accumulation_after_split, cpu_micro_batch_size
from lorakit.plan.oom import restore_memory_settings
from lorakit.run.checkpoints import TrainerState
from lorakit.run.folder import (
    check_space_for_checkpoints,
    create_output_dir,
    first_missing_folder,
    prepare_run_dir,
    remove_unused_run_dir,
)
from lorakit.run.lock import hold_run_lock
from lorakit.runtime import host_heap
from lorakit.runtime.device import use_expandable_segments
from lorakit.runtime.distributed import current_ranks, process_group
from lorakit.runtime.logging import get_logger
from lorakit.runtime.seed import seed_everything
from lorakit.training.data_parallel import NullMetricsSink, step_share_warning
from lorakit.training.early_stop import EarlyStopping
from lorakit.training.finalize import TrainResult
from lorakit.training.metrics import MetricsSink, ProgressReporter, SilentReporter, interval_warnings
from lorakit.training.numerics import loss_scaler
from lorakit.training.objective import Objective
from lorakit.training.preference_objective import PreferenceObjective
from lorakit.training.run_dir import resume_state
from lorakit.training.schedule import build_optimizer, build_scheduler
from lorakit.training.session import TrainingSession, build_session
from lorakit.training.tracking import open_tracker
from lorakit.training.trainer import Trainer, TrainerHooks

__all__ = ["TrainResult", "train", "open_trainer"]

log = get_logger("training.loop")


def train(
    config: RunConfig, *, resume: bool = False, overwrite: bool = False, reporter: ProgressReporter | None = None,
    hooks: TrainerHooks | None = None, objective: Objective | None = None,
) -> TrainResult:
    """Fine-tune `config.model` with LoRA on `config.data`; write checkpoints and the final adapter to output_dir.

    Under torchrun / `accelerate launch` every process calls this; rank 0 alone owns the run folder (lock,
    checkpoints, metrics, final/) and reports progress (training/data_parallel.py). `hooks` observe the
    session and each step (training/trainer.py); `objective` is what a step minimises (default: next-token
    cross-entropy of the answers, training/objective.py)."""
    use_expandable_segments()  # before CUDA starts (process_group may start it): the planner's slack assumes it
    try:
        return _train_in_group(config, resume=resume, overwrite=overwrite, reporter=reporter, hooks=hooks,
                               objective=objective)
    finally:
        # The session (model, optimizer, data) is gone now; what comes next in this process (`mode: both`'s
        # answer, eval.after_training) should not sit on top of the heap it left (runtime/host_heap.py).
        host_heap.release_freed_memory()


def _train_in_group(config: RunConfig, *, resume: bool, overwrite: bool, reporter: ProgressReporter | None,
                    hooks: TrainerHooks | None, objective: Objective | None) -> TrainResult:
    with process_group() as ranks:
        if not ranks.is_main:
            return _train_locked(config, Path(config.output_dir), resume=resume, overwrite=overwrite,
                                 reporter=SilentReporter(), hooks=hooks, objective=objective)
        reporter = reporter or SilentReporter()
        created = first_missing_folder(Path(config.output_dir))
        run_dir = create_output_dir(Path(config.output_dir))
        try:
            with hold_run_lock(run_dir):
                return _train_locked(config, run_dir, resume=resume, overwrite=overwrite, reporter=reporter,
                                     hooks=hooks, objective=objective)
        except BaseException:
            # A data error, Ctrl-C or a bug before the first write leaves no run folder holding only its lock
            # (it removes nothing once the run wrote anything).
            remove_unused_run_dir(run_dir, created)
            raise


def _train_locked(config: RunConfig, run_dir: Path, *, resume: bool, overwrite: bool, reporter: ProgressReporter,
                  hooks: TrainerHooks | None, objective: Objective | None) -> TrainResult:
    ranks = current_ranks()
    if ranks.is_main:
        prepare_run_dir(run_dir, resume=resume, overwrite=overwrite)
    ranks.barrier()  # the others read checkpoints only once rank 0 has cleaned (or cleared) the folder
    seed_everything(config.seed)
    session = build_session(config, reporter)
    if hooks is not None:
        hooks.session_ready(session)
    trainer = open_trainer(session, run_dir, resume=resume, reporter=reporter, hooks=hooks, objective=objective)
    try:
        stopped_early = trainer.fit()
    finally:
        trainer.close()
    return trainer.finish(stopped_early)


def open_trainer(session: TrainingSession, run_dir: Path, *, resume: bool, reporter: ProgressReporter,
                 hooks: TrainerHooks | None = None, objective: Objective | None = None) -> Trainer:
    """The Trainer for `session`: optimizer, scheduler, loss scaler and early stopping, restored from the newest
    checkpoint when resuming; the CPU micro-batch and gradient buffers sized; rank 0's metrics sink opened."""
    config, ranks = session.config, session.ranks
    for warning in interval_warnings(config.training, has_validation=bool(session.data.splits.validation)):
        log.warning(warning)
    params = [p for p in session.model.parameters() if p.requires_grad]
    if ranks.is_main:
        check_space_for_checkpoints(run_dir, sum(p.numel() * p.element_size() for p in params),
                                    config.training.save_total_limit, config.training.early_stopping_patience is not None)
    optimizer = build_optimizer(session.model, config.training)
    scheduler = build_scheduler(optimizer, config.training)
    scaler = loss_scaler(session.dtype, session.device)
    state = TrainerState()
    stopper = EarlyStopping(config.training.early_stopping_patience, config.training.early_stopping_min_delta)
    if resume:
        state = resume_state(run_dir, session, optimizer, scheduler, scaler, stopper, reporter)
    restore_memory_settings(session, state)  # the checkpointing an out-of-memory re-plan chose, after a resume
    if session.device.type == "cpu" and state.micro_batch_size is None:
        _right_size_for_cpu(session, state, reporter)
    # (host_heap.keeps_gradients_allocated is looked up at call time: tests switch it off there)
    if host_heap.keeps_gradients_allocated(session.device, sharded=session.sharded):
        host_heap.allocate_gradients(params)  # before the first activations, so that they do not scatter the heap
    share_warning = step_share_warning(ranks, state.gradient_accumulation_steps or config.training.gradient_accumulation_steps)
    if share_warning and ranks.is_main:
        log.warning(share_warning)
    tracker = open_tracker(config, run_dir, resume=resume) if ranks.is_main else None
    sink = MetricsSink(run_dir, state.log_history, state.step, tracker=tracker) if ranks.is_main else NullMetricsSink()
    if objective is None and config.training.method != "sft":
        objective = PreferenceObjective(config.training)  # dpo / orpo / simpo on chosen/rejected pairs
    return Trainer(session, run_dir, state=state, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                   stopper=stopper, sink=sink, reporter=reporter, tracker=tracker, objective=objective, hooks=hooks)


def _right_size_for_cpu(session: TrainingSession, state: TrainerState, reporter: ProgressReporter) -> None:
    """Cut the configured micro-batches into CPU-sized pieces (plan/micro_batches.py): same examples and loss per
    optimizer step, a fraction of the activation memory."""
    training = session.config.training
    micro = cpu_micro_batch_size(training.batch_size, session.config.model.max_length)
    if micro is None:
        return
    state.micro_batch_size = micro
    state.gradient_accumulation_steps = accumulation_after_split(training.gradient_accumulation_steps,
                                                                 training.batch_size, micro)
    reporter.message(f"on CPU each micro-batch of {training.batch_size} runs as pieces of {micro} (same examples "
                     "and loss per optimizer step, less memory)")

