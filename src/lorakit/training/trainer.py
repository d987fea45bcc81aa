"""The Trainer: one run's optimizer, scheduler, loss scaler, early stopping, metrics sink and reporter around
a TrainingSession (training/session.py), with public `step()`, `evaluate()`, `save()`, `fit()` and `finish()`.

A plain PyTorch loop rather than the HF Trainer, because exact resume (data position, RNG, early stopping),
per-step fault handling and token-weighted gradient accumulation must be visible and testable here. What a
step minimises is the `objective` (training/objective.py), the one seam between a batch and its loss.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from lorakit.config import dump_config
from lorakit.errors import TrainingError
from lorakit.model.checkpointing import activation_offload
from lorakit.plan.micro_batches import accumulation_after_split, halved
from lorakit.plan.oom import OOM_ADVICE, TorchRngSnapshot, release_memory, replan_after_oom
from lorakit.run.checkpoints import TrainerState, save_checkpoint
from lorakit.run.layout import FINAL
from lorakit.runtime import host_heap
from lorakit.runtime.ablation import enabled
from lorakit.runtime.logging import get_logger
from lorakit.runtime.seed import micro_batch_seed
from lorakit.training.batches import batch_tokens
from lorakit.training.data_order import make_next_batches, next_micro_batches, step_pieces
from lorakit.training.data_parallel import NullMetricsSink, agree_on_step, shared_split_loss
from lorakit.training.dataset import example_length
from lorakit.training.early_stop import EarlyStopping
from lorakit.training.finalize import TrainResult, finalize_run
from lorakit.training.metrics import ProgressReporter, SilentReporter
from lorakit.training.numerics import MIN_LOSS_SCALE, loss_scaler, numerical_fault
from lorakit.training.objective import NextTokenObjective, Objective
from lorakit.training.resume_drift import current_environment
from lorakit.training.schedule import build_optimizer, build_scheduler
from lorakit.training.session import TrainingSession
from lorakit.training.sharding import gather_trainable_state

__all__ = ["Trainer", "TrainerHooks"]

log = get_logger("training.trainer")


class TrainerHooks:
    """Observers of a run's steps (tests and benchmarks watch or perturb a step here instead of patching the
    Trainer). `step` is the optimizer step being run (1-based); `groups` its micro-batches (example indices)."""

    def session_ready(self, session: TrainingSession) -> None:
        """The session is built (model loaded, LoRA attached), before the optimizer exists."""

    def step_starting(self, trainer: Trainer, step: int, groups: list[list[int]]) -> None:
        """Before every attempt at a step (an out-of-memory retry attempts it again, re-cut)."""

    def step_finished(self, trainer: Trainer, step: int, groups: list[list[int]]) -> None:
        """After the optimizer update of a step that succeeded."""


class Trainer:
    """One run's training state. `fit()` is the loop; `step()`, `evaluate()` and `save()` its parts."""

    def __init__(self, session: TrainingSession, run_dir: Path, *, state: TrainerState | None = None,
                 optimizer=None, scheduler=None, scaler=..., stopper: EarlyStopping | None = None,
                 sink=None, reporter: ProgressReporter | None = None, tracker=None,
                 objective: Objective | None = None, hooks: TrainerHooks | None = None,
                 recover_from_oom: bool = True) -> None:
        """Missing parts are built from `session.config` (optimizer, scheduler, the dtype's loss scaler, early
        stopping); `sink` defaults to no metrics file, `reporter` to silence. `recover_from_oom=False` lets an
        out-of-memory error of a step propagate instead of re-planning (a benchmark row that does not fit is a
        result)."""
        training = session.config.training
        self.session, self.run_dir = session, Path(run_dir)
        self.state = state if state is not None else TrainerState()
        self.params = [p for p in session.model.parameters() if p.requires_grad]
        self.optimizer = optimizer if optimizer is not None else build_optimizer(session.model, training)
        self.scheduler = scheduler if scheduler is not None else build_scheduler(self.optimizer, training)
        self.scaler = loss_scaler(session.dtype, session.device) if scaler is ... else scaler
        self.stopper = stopper if stopper is not None else EarlyStopping(training.early_stopping_patience,
                                                                         training.early_stopping_min_delta)
        self.sink = sink if sink is not None else NullMetricsSink()
        self.reporter = reporter or SilentReporter()
        self.tracker = tracker
        self.objective = objective or NextTokenObjective()
        self.hooks = hooks or TrainerHooks()
        self.recover_from_oom = recover_from_oom
        self._window_tokens, self._window_start = 0, time.perf_counter()

    # The loop, top to bottom.
    def fit(self) -> bool:
        """Run steps up to training.max_steps, logging, validating and checkpointing as configured; returns
        whether early stopping ended the run."""
        cfg, state = self.session.config.training, self.state
        if state.stopped_early:
            return True
        self.reporter.start(cfg.max_steps, state.step)
        self._window_tokens, self._window_start = 0, time.perf_counter()
        while state.step < cfg.max_steps:
            self.step()
            record = {"step": state.step, **self._train_metrics()}
            stop = False
            if self.session.data.splits.validation and (state.step % cfg.eval_steps == 0 or state.step == cfg.max_steps):
                val_loss = self.evaluate()
                stop = self.stopper.update(state.step, val_loss)
                record["val_loss"] = val_loss
            if len(record) > 1:
                state.log_history.append(record)
                self.sink.write(record)
            self.reporter.step(state.step, record)
            state.early_stopping = self.stopper.state_dict()
            if stop:
                self.reporter.message(f"early stopping at step {state.step}: validation loss has not improved for "
                                      f"{self.stopper.patience} evaluations (best {self.stopper.best_loss:.4f} at "
                                      f"step {self.stopper.best_step})")
                state.stopped_early = True
                return True
            # A new best is saved too while early stopping is on: final/ ships it if patience runs out (early_stop.py).
            saves_best = self.stopper.enabled and self.stopper.improved_at(state.step)
            if (state.step % cfg.save_steps == 0 or saves_best) and state.step < cfg.max_steps:
                self.save()  # every rank: fsdp gathers
        return False

    def step(self) -> tuple[float, int]:
        """One optimizer step on the next micro-batches; advances the data position and `state.step`; returns
        the step's loss and the tokens it saw. A CUDA out-of-memory error in forward/backward re-plans
        (plan/oom.py: more checkpointed layers, offload, or a smaller micro-batch, whichever the planner
        finds fastest in the memory there is) or, when no plan needs less memory, halves the micro-batch; then it
        re-runs the same step on the same examples. At micro-batch 1 with no plan left it saves a checkpoint of the
        state before the step and stops with advice."""
        session, state, cfg = self.session, self.state, self.session.config
        position = (state.epoch, state.batch_in_epoch)
        groups = next_micro_batches(session, state)
        rng = TorchRngSnapshot.capture()
        while True:
            micro = state.micro_batch_size or cfg.training.batch_size
            pieces = step_pieces(session, state, groups)
            try:
                loss, tokens = self._optimizer_step(pieces, state.step + 1, lambda: make_next_batches(session, state))
                break
            except torch.OutOfMemoryError:
                if not self.recover_from_oom:
                    raise
                # handled below, once the exception (and the failed step's tensors it references) is gone
            release_memory(self.optimizer)
            rng.restore()
            replanned = replan_after_oom(session, state, state.step + 1)
            if replanned is not None:
                self.reporter.message(replanned)  # said once, like the halving below
                continue
            if micro == 1:
                raise self._out_of_memory_at_micro_batch_1(groups, position)
            state.micro_batch_size = halved(micro)
            state.gradient_accumulation_steps = accumulation_after_split(
                cfg.training.gradient_accumulation_steps, cfg.training.batch_size, state.micro_batch_size)
            # said once: the CLI prints the reporter's messages (no log line as well)
            self.reporter.message(f"out of memory at step {state.step + 1} with micro-batch {micro}: retrying the step "
                                  f"with micro-batch {state.micro_batch_size} and {state.gradient_accumulation_steps} "
                                  "accumulation steps (same examples per optimizer step)")
        state.step += 1
        state.window_loss, state.window_steps = state.window_loss + loss, state.window_steps + 1
        self._window_tokens += tokens
        return loss, tokens

    def evaluate(self) -> float | None:
        """Validation loss per answer token (the same value on every rank); None without a validation split."""
        session, training = self.session, self.session.config.training
        return shared_split_loss(session.ranks, session.loss_model, session.data.splits.validation,
                                 sharded=session.sharded,
                                 batch_size=self.state.micro_batch_size or training.batch_size,
                                 pad_token_id=session.tokenizer.pad_token_id,
                                 autocast_dtype=session.autocast_dtype)

    def save(self) -> Path:
        """Save a checkpoint from rank 0. Under fsdp every rank calls this, to gather the full LoRA weights and
        optimizer state to rank 0 first (so the files are those of a one-process run)."""
        session = self.session
        trainable = gather_trainable_state(session.model, self.optimizer) if session.sharded else None
        if not session.ranks.is_main:
            return self.run_dir
        return save_checkpoint(self.run_dir, model=session.model, optimizer=self.optimizer, scheduler=self.scheduler,
                               scaler=self.scaler, state=self.state, identity=session.identity,
                               config_yaml=dump_config(session.config), keep=session.config.training.save_total_limit,
                               trainable=trainable, environment=current_environment(session.device))

    def close(self) -> None:
        """Close the metrics sink and the progress display (also after an error)."""
        self.sink.close()
        self.reporter.finish()

    def finish(self, stopped_early: bool) -> TrainResult:
        """The last checkpoint, then final/ and the manifest (training/finalize.py)."""
        session, state = self.session, self.state
        state.stopped_early = stopped_early  # a resume after this checkpoint must not train past an early stop
        if not session.ranks.is_main and not session.sharded:  # rank 0 writes the last checkpoint and final/ alone
            return TrainResult(self.run_dir, self.run_dir / FINAL, state.step, stopped_early, {})
        self.save()  # under fsdp every rank gathers
        result = finalize_run(self.run_dir, session, state, self.stopper, stopped_early, self.reporter)  # fsdp: every rank
        if self.tracker is not None:
            self.tracker.finish(self.run_dir)
        return result

    # The parts of a step.
    def _train_metrics(self) -> dict:
        """The logged training metrics when this step closes a logging window (else {}); starts the next window."""
        cfg, state = self.session.config.training, self.state
        if not (state.step % cfg.logging_steps == 0 or state.step == cfg.max_steps):
            return {}
        elapsed = time.perf_counter() - self._window_start
        metrics = dict(train_loss=state.window_loss / state.window_steps,
                       learning_rate=self.scheduler.get_last_lr()[0],
                       tokens_per_second=self._window_tokens / max(elapsed, 1e-9), epoch=state.epoch,
                       **self.objective.logged_metrics())
        state.window_loss, state.window_steps = 0.0, 0
        self._window_tokens, self._window_start = 0, time.perf_counter()
        return metrics

    def _optimizer_step(self, groups: list[list[int]], step: int, prepare_next=None) -> tuple[float, int]:
        """One optimizer step over several micro-batches; loss is normalised by the step's answer tokens, so
        micro-batch 1 x accumulation 4 equals micro-batch 4 x accumulation 1. `prepare_next` runs once the last
        backward pass is queued, before this step's sync (BatchesAhead)."""
        self.hooks.step_starting(self, step, groups)
        session, optimizer, scaler = self.session, self.optimizer, self.scaler
        cfg = session.config.training
        batches = [session.ahead.take(session, group) for group in groups]
        target_tokens = sum(self.objective.targets(batch) for batch in batches)  # the step's answer tokens (or pairs)
        autocast = torch.autocast(session.device.type, dtype=session.autocast_dtype) if session.autocast_dtype else nullcontext()
        if not session.model.training:  # (walking ~1,700 modules costs milliseconds of idle GPU per step)
            session.model.train()
        sharded = session.sharded
        ranks = session.ranks
        step_loss, seen_tokens, out_of_memory = 0.0, 0, False
        # One host-device synchronisation per step (after the gradient norm) instead of one after each forward and
        # backward pass: the host queues the next pass while the GPU still runs this one. Under a launcher the ranks
        # agree on the loss after every micro-batch's backward, as before.
        host_overlap = enabled("host_overlap") and not ranks.distributed
        losses: list[torch.Tensor] = []
        # Under a launcher this process runs micro-batches rank, rank + N, ... (training/data_parallel.py); under fsdp
        # every rank runs as many passes as the busiest, padding with zero-weighted ones (training/sharding.py).
        mine = (ranks.share_in_lockstep(list(enumerate(batches))) if sharded
                else [(True, item) for item in ranks.share(list(enumerate(batches)))])
        for real, (index, batch) in mine:
            # Dropout/NEFTune draws depend on (seed, step, micro-batch) only, not on which process runs it.
            torch.manual_seed(micro_batch_seed(session.config.seed, step, index))
            if real:
                seen_tokens += batch_tokens(batch)
            batch = {k: v.to(session.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
            try:  # a CUDA out-of-memory error is retried by step(), on every rank together
                with autocast, activation_offload(session.offload_activations):
                    loss = self.objective.loss(session, batch, target_tokens)  # no full-vocab logits either way
                loss = loss if real else loss * 0.0
                # (Under fsdp every rank must still run backward; with one sync the step's sum is checked below.)
                if not host_overlap and not sharded and not torch.isfinite(loss):
                    step_loss += float(loss.detach())  # the summed loss below stops every rank with one message
                    break
                (scaler.scale(loss) if scaler is not None else loss).backward()  # under fsdp this sums the gradients
            except torch.OutOfMemoryError:
                if sharded:
                    raise self._sharded_out_of_memory(step) from None
                if not ranks.distributed:
                    raise
                out_of_memory = True
                break
            if host_overlap:
                losses.append(loss.detach())
            else:
                step_loss += float(loss.detach())
        if host_overlap and prepare_next is not None:
            prepare_next()
        if not host_overlap:  # every rank's loss and tokens, and the gradients summed over ranks (collective)
            step_loss, seen_tokens = agree_on_step(ranks, step_loss, seen_tokens, out_of_memory)
            if not sharded:
                ranks.sum_gradients_(self.params)
        if scaler is not None:
            scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm or math.inf)
        if host_overlap:  # the step's one sync: loss and gradient norm come to the host together
            step_loss, norm = torch.stack([torch.stack(losses).double().sum(), grad_norm.double()]).tolist()
        else:
            norm = float(grad_norm)
        if not math.isfinite(step_loss):
            raise self._numerical_fault(step, groups, f"The loss became {step_loss}")
        if scaler is None and not math.isfinite(norm):
            raise self._numerical_fault(step, groups, f"The gradient norm became {norm}")
        if step_loss == 0.0 and target_tokens > 0:
            # Cross-entropy over answer tokens is exactly 0 only when nothing is left to learn from (every gradient
            # is 0): a broken loss or labels, or logits so saturated that the run has collapsed. Silently continuing
            # would log a perfect loss for a run that no longer trains.
            raise self._numerical_fault(step, groups, "The loss became exactly 0.0 (every gradient is zero)")
        try:
            if scaler is not None:
                scaler.step(optimizer)  # skips the step on inf/nan gradients and lowers the scale
                scaler.update()
                if scaler.get_scale() < MIN_LOSS_SCALE:
                    raise self._numerical_fault(step, groups, f"The fp16 loss scale fell to {scaler.get_scale()} "
                                                "(the gradients overflow even unscaled)")
            else:
                optimizer.step()
        except torch.OutOfMemoryError:
            # The update may be half-applied in memory: never retried, never saved; the last checkpoint stays.
            raise TrainingError(f"Out of memory in the optimizer update at step {step}. The last checkpoint is kept.",
                                hint=OOM_ADVICE) from None
        self.scheduler.step()
        optimizer.zero_grad(set_to_none=not host_heap.keeps_gradients_allocated(session.device, sharded=sharded))
        self.hooks.step_finished(self, step, groups)
        return step_loss, seen_tokens

    def _numerical_fault(self, step: int, groups: list[list[int]], what: str) -> TrainingError:
        return numerical_fault(self.session.data.splits.train, self.session.dtype, step, groups, what)

    def _out_of_memory_at_micro_batch_1(self, groups: list[list[int]], position: tuple[int, int]) -> TrainingError:
        """Save a resumable checkpoint of the state before the failed step; the error names its longest example."""
        state = self.state
        state.epoch, state.batch_in_epoch = position  # the failed step is re-run after --resume
        state.micro_batch_size = state.gradient_accumulation_steps = None  # retry as configured after a fix
        state.checkpointed_layers = state.offload_activations = None
        path = self.save()
        self.session.ranks.barrier()  # no rank exits (and has the launcher stop rank 0) before the save is done
        examples = self.session.data.splits.train
        longest = max((examples[i] for group in groups for i in group), key=example_length)
        return TrainingError(f"Out of memory at step {state.step + 1} even with micro-batch 1. Saved a resumable "
                             f"checkpoint at {path}. The step's longest example is {longest.source}:{longest.line} "
                             f"({example_length(longest)} tokens).", hint=OOM_ADVICE)

    def _sharded_out_of_memory(self, step: int) -> TrainingError:
        """Out of memory under fsdp stops the run: the other ranks wait inside this pass's weight gathers, which
        this rank can no longer join, so the micro-batch cannot be halved on all ranks together. The launcher
        stops the others when this rank exits; this rank says why (ranks other than 0 print only errors)."""
        session = self.session
        error = TrainingError(f"Out of memory at step {step} under training.distributed fsdp (process "
                              f"{session.ranks.rank}). The last checkpoint is kept.",
                              hint="Set training.batch_size lower or training.gradient_checkpointing: true (`lorakit "
                              "plan CONFIG --gpus N` shows the plan per GPU), then continue with `lorakit train CONFIG "
                              "--resume`.")
        if not session.ranks.is_main:
            log.error("%s %s", error.message, error.hint)
        return error
