"""The training recipe, top to bottom: setup -> (resume) -> steps -> final adapter + manifest.

A plain PyTorch loop rather than the HF Trainer, because exact resume (data position, RNG, early stopping),
per-step fault handling and token-weighted gradient accumulation must be visible and testable here.
"""

from __future__ import annotations

import hashlib
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from lorakit.config import RunConfig, dump_config
from lorakit.errors import LorakitError, TrainingError
from lorakit.model.adapters import (
    name_adapter_base, public_model_name, resolve_target_modules, trainable_parameter_count, variant_identity,
)
from lorakit.model.checkpointing import activation_offload
from lorakit.model.kernels import LOSS_POSITIONS, causal_lm_loss, loss_positions
from lorakit.model.load import (
    ModelSource,
    load_base_model,
    load_tokenizer,
    model_fingerprint,
    read_model_config,
    resolve_model_source,
    tokenizer_fingerprint,
)
from lorakit.model.quantize import bitsandbytes_available, nf4_config, wants_4bit
from lorakit.model.run_plan import resolve_auto_settings
from lorakit.model.trainable import make_trainable
from lorakit.runtime.ablation import enabled
from lorakit.runtime.device import compute_dtype, pick_device, use_expandable_segments
from lorakit.runtime.distributed import Ranks, current_ranks, process_group
from lorakit.runtime.host_heap import allocate_gradients, keeps_gradients_allocated, release_freed_memory
from lorakit.runtime.logging import get_logger
from lorakit.runtime.run_lock import hold_run_lock
from lorakit.runtime.seed import micro_batch_seed, seed_everything
from lorakit.training.batches import collate_group, epoch_groups, packed_epoch_groups
from lorakit.training.checkpoint import (
    TrainerState,
    save_checkpoint,
)
from lorakit.training.data_parallel import (
    NullMetricsSink, agree_on_plan, agree_on_step, shared_split_loss, step_share_warning,
)
from lorakit.training.dataset import PreparedData, prepare_data
from lorakit.training.preference_objective import PreferenceObjective
from lorakit.training.preference_setup import prepare_for_method
from lorakit.training.finalize import TrainResult, finalize_run
from lorakit.training.run_dir import (
    FINAL,
    check_space_for_checkpoints,
    create_output_dir,
    first_missing_folder,
    prepare_run_dir,
    remove_unused_run_dir,
    resume_state,
)
from lorakit.training.early_stop import EarlyStopping
from lorakit.training.metrics import MetricsSink, ProgressReporter, SilentReporter, interval_warnings
from lorakit.training.resume_drift import current_environment
from lorakit.training.tracking import open_tracker
from lorakit.data.chat_template import chat_template_identity
from lorakit.training.numerics import MIN_LOSS_SCALE, loss_scaler, numerical_fault
from lorakit.training.sharding import ShardedLoss, gather_trainable_state, shard_model
from lorakit.training.oom import (
    OOM_ADVICE,
    TorchRngSnapshot,
    accumulation_after_split,
    cpu_micro_batch_size,
    halved,
    release_memory,
    split_into_micro_batches,
)
from lorakit.training.oom_replan import replan_after_oom, restore_memory_settings

__all__ = ["TrainResult", "TrainingSession", "train", "build_session"]

log = get_logger("training.loop")


@dataclass
class TrainingSession:
    """Everything a step needs, built once by `build_session`."""

    config: RunConfig
    source: ModelSource
    tokenizer: object
    model: torch.nn.Module
    data: PreparedData
    device: torch.device
    dtype: torch.dtype
    quantized: bool
    identity: dict
    offload_activations: bool = False  # planned: checkpointed activations live in CPU memory
    ranks: Ranks = Ranks()  # the processes of a torchrun / accelerate launch (one by default)
    sharded_root: ShardedLoss | None = None  # training.distributed fsdp: the FSDP2 root around `model`
    ahead: "BatchesAhead" = field(default_factory=lambda: BatchesAhead())  # the next step's batches, made early
    epoch_groups: dict[int, list[list[int]]] = field(default_factory=dict)  # an epoch's micro-batches, by epoch
    objective: PreferenceObjective | None = None  # training.method dpo/orpo/simpo; None: next-token loss (SFT)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return self.dtype if self.dtype != torch.float32 else None

    @property
    def sharded(self) -> bool:
        """training.distributed fsdp under a launcher: the model's weights are spread over the processes."""
        return self.sharded_root is not None

    @property
    def loss_model(self):
        """What computes the loss: the FSDP2 root under fsdp (its forward gathers the weights), else the model."""
        return self.sharded_root if self.sharded else self.model


class BatchesAhead:
    """The next optimizer step's micro-batches, collated on the CPU while the GPU still runs this step's backward
    pass (the host would otherwise collate them with the GPU idle, after the step's one sync)."""

    def __init__(self) -> None:
        self._ready: dict[tuple[int, ...], dict] = {}

    def make(self, session: "TrainingSession", groups: list[list[int]]) -> None:
        self._ready = {tuple(group): collate_for_step(session, group) for group in groups}

    def take(self, session: "TrainingSession", group: list[int]) -> dict:
        """The batch made ahead for `group`, or a fresh one (first step, or a step an out-of-memory retry re-cut)."""
        ready = self._ready.pop(tuple(group), None)
        return ready if ready is not None else collate_for_step(session, group)


def collate_for_step(session: "TrainingSession", group: list[int]) -> dict:
    """One micro-batch on the CPU, with the positions the loss reads (so finding them costs no GPU sync)."""
    batch = collate_group(session.data.splits.train, group, session.tokenizer.pad_token_id,
                          packed=session.config.training.packing)
    batch[LOSS_POSITIONS] = loss_positions(batch["labels"])
    return batch


def build_session(config: RunConfig, reporter: ProgressReporter) -> TrainingSession:
    """Load tokenizer, data, base model and LoRA; the order puts cheap failures (data) before slow ones."""
    ranks = current_ranks()
    device = ranks.device if ranks.distributed else pick_device()  # cuda:LOCAL_RANK under a launcher
    dtype = compute_dtype(config.training.precision, device)
    source = resolve_model_source(config.model)
    tokenizer = load_tokenizer(source, config.model)
    data = prepare_data(config, tokenizer)  # first: a data problem is the first and only thing reported
    if not data.splits.train:
        raise TrainingError("No training examples are left after splitting; add data or lower the split fractions.")
    sizes = data.splits.sizes()
    reporter.message(f"data: {sizes['train']} train / {sizes['validation']} validation / {sizes['test']} test examples"
                     + (f", {data.truncated} truncated to {config.model.max_length} tokens" if data.truncated else ""))
    # `auto` batch size, checkpointing and quantization: the memory planner, from config.json alone.
    resolved = resolve_auto_settings(config, read_model_config(source), cuda=device.type == "cuda",
                                     dtype_bytes=torch.finfo(dtype).bits // 8, nf4_available=bitsandbytes_available(),
                                     longest_example=data.longest_example, world_size=ranks.world_size)
    config = resolved.config
    agree_on_plan(ranks, config)
    sharded = config.training.distributed == "fsdp" and ranks.distributed
    if resolved.plan is not None:
        reporter.message(f"memory plan: {config.model.quantization}, micro-batch {config.training.batch_size}, "
                         f"checkpointing {resolved.plan.checkpointing_text}, "
                         + (f"fsdp over {ranks.world_size} processes, " if sharded else "")
                         + f"predicted peak {resolved.plan.chosen.estimate.peak_allocated / 2**30:.1f} GiB "
                         f"{'per GPU' if device.type == 'cuda' else 'of RAM'}")
    quantized = wants_4bit(config.model.quantization, device)
    # Under fsdp the whole model never sits on one GPU: it loads into CPU memory, and fully_shard moves each
    # layer's shard to this rank's GPU.
    load_device = torch.device("cpu") if sharded else device
    model = load_base_model(source, config.model, load_device, dtype, nf4_config(dtype) if quantized else None)
    targets = resolve_target_modules(model, config.lora.target_modules)
    model = make_trainable(model, config, device=device, quantized=quantized,
                           checkpointed_layers=resolved.checkpointed_layers, offload_activations=resolved.offload_activations,
                           sharded=sharded)
    name_adapter_base(model, public_model_name(source))  # adapter_config.json names no local path
    method_identity = prepare_for_method(model, config, targets)  # starting adapter, DPO reference, dropout
    # Every module in training mode (from_pretrained leaves the base model's in eval mode under a training-mode
    # peft wrapper): a step then switches modes only after an evaluation flipped the root (_train_step).
    model.train()
    root = shard_model(model) if sharded else None
    if sharded:
        reporter.message(f"fsdp: frozen weights and LoRA states sharded over {ranks.world_size} processes (FSDP2)")
    trainable, total = trainable_parameter_count(model)
    reporter.message(
        f"{source.model_id}: {total / 1e6:.1f}M parameters, {trainable / 1e6:.2f}M trainable (LoRA r={config.lora.r} on "
        f"{', '.join(targets)}), {'nf4 4-bit' if quantized else str(dtype).removeprefix('torch.')} on {device.type}"
    )
    identity = {
        "model_id": source.model_id,
        "model_revision": source.revision,
        "model_fingerprint": model_fingerprint(source.directory),
        "data_sha256": data.data_sha256,
        "lora_r": config.lora.r,
        "lora_alpha": config.lora.alpha,
        "lora_target_modules": targets,
        "max_length": config.model.max_length,
        "system_prompt_sha256": hashlib.sha256(config.data.system_prompt.encode()).hexdigest(),
        "seed": config.seed,
        "effective_batch_size": config.training.batch_size * config.training.gradient_accumulation_steps,
        "batch_size": config.training.batch_size,  # cuts the data order into micro-batches
        "packing": config.training.packing,
        **variant_identity(config),
        **chat_template_identity(config.model.chat_template),
        "tokenizer_sha256": tokenizer_fingerprint(tokenizer),
        **method_identity,
    }
    objective = PreferenceObjective(config.training) if config.training.method != "sft" else None
    return TrainingSession(config, source, tokenizer, model, data, device, dtype, quantized, identity,
                           resolved.offload_activations, ranks, root, objective=objective)


def train(
    config: RunConfig, *, resume: bool = False, overwrite: bool = False, reporter: ProgressReporter | None = None
) -> TrainResult:
    """Fine-tune `config.model` with LoRA on `config.data`; write checkpoints and the final adapter to output_dir.

    Under torchrun / `accelerate launch` every process calls this; rank 0 alone owns the run folder (lock,
    checkpoints, metrics, final/) and reports progress (training/data_parallel.py)."""
    use_expandable_segments()  # before CUDA starts (process_group may start it): the planner's slack assumes it
    try:
        return _train_in_group(config, resume=resume, overwrite=overwrite, reporter=reporter)
    finally:
        # The session (model, optimizer, data) is gone now; what comes next in this process (`mode: both`'s
        # answer, eval.after_training) should not sit on top of the heap it left (runtime/host_heap.py).
        release_freed_memory()


def _train_in_group(config: RunConfig, *, resume: bool, overwrite: bool, reporter: ProgressReporter | None) -> TrainResult:
    with process_group() as ranks:
        if not ranks.is_main:
            return _train_locked(config, Path(config.output_dir), resume=resume, overwrite=overwrite,
                                 reporter=SilentReporter())
        reporter = reporter or SilentReporter()
        created = first_missing_folder(Path(config.output_dir))
        run_dir = create_output_dir(Path(config.output_dir))
        try:
            with hold_run_lock(run_dir):
                return _train_locked(config, run_dir, resume=resume, overwrite=overwrite, reporter=reporter)
        except BaseException:
            # A data error, Ctrl-C or a bug before the first write leaves no run folder holding only its lock
            # (it removes nothing once the run wrote anything).
            remove_unused_run_dir(run_dir, created)
            raise


def _train_locked(config: RunConfig, run_dir: Path, *, resume: bool, overwrite: bool, reporter: ProgressReporter) -> TrainResult:
    ranks = current_ranks()
    if ranks.is_main:
        prepare_run_dir(run_dir, resume=resume, overwrite=overwrite)
    ranks.barrier()  # the others read checkpoints only once rank 0 has cleaned (or cleared) the folder
    seed_everything(config.seed)
    session = build_session(config, reporter)
    for warning in interval_warnings(session.config.training, has_validation=bool(session.data.splits.validation)):
        log.warning(warning)
    params = [p for p in session.model.parameters() if p.requires_grad]
    if ranks.is_main:
        check_space_for_checkpoints(run_dir, sum(p.numel() * p.element_size() for p in params),
                                    config.training.save_total_limit, config.training.early_stopping_patience is not None)
    from lorakit.training.schedule import build_optimizer, build_scheduler

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
    if keeps_gradients_allocated(session.device, sharded=session.sharded):
        allocate_gradients(params)  # before the first activations, so that they do not scatter the heap
    share_warning = step_share_warning(ranks, state.gradient_accumulation_steps or config.training.gradient_accumulation_steps)
    if share_warning and ranks.is_main:
        log.warning(share_warning)
    tracker = open_tracker(config, run_dir, resume=resume) if ranks.is_main else None
    sink = MetricsSink(run_dir, state.log_history, state.step, tracker=tracker) if ranks.is_main else NullMetricsSink()
    try:
        stopped_early = _run_steps(session, state, stopper, params, optimizer, scheduler, scaler, sink, reporter, run_dir)
    finally:
        sink.close()
        reporter.finish()
    state.stopped_early = stopped_early  # a resume after this checkpoint must not train past an early stop
    if not ranks.is_main and not session.sharded:  # rank 0 writes the last checkpoint and final/ alone
        return TrainResult(run_dir, run_dir / FINAL, state.step, stopped_early, {})
    _save_checkpoint(session, run_dir, optimizer, scheduler, scaler, state)  # under fsdp every rank gathers
    result = finalize_run(run_dir, session, state, stopper, stopped_early, reporter)  # under fsdp on every rank
    if tracker is not None:
        tracker.finish(run_dir)
    return result


def _save_checkpoint(session: TrainingSession, run_dir: Path, optimizer, scheduler, scaler, state: TrainerState) -> Path:
    """Save a checkpoint from rank 0. Under fsdp every rank calls this, to gather the full LoRA weights and
    optimizer state to rank 0 first (so the files are those of a one-process run)."""
    trainable = gather_trainable_state(session.model, optimizer) if session.sharded else None
    if not session.ranks.is_main:
        return run_dir
    return save_checkpoint(run_dir, model=session.model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                           state=state, identity=session.identity, config_yaml=dump_config(session.config),
                           keep=session.config.training.save_total_limit, trainable=trainable,
                           environment=current_environment(session.device))


def _right_size_for_cpu(session: TrainingSession, state: TrainerState, reporter: ProgressReporter) -> None:
    """Cut the configured micro-batches into CPU-sized pieces (training/oom.py): same examples and loss per
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


def _next_micro_batches(session: TrainingSession, state: TrainerState) -> list[list[int]]:
    """The example-index groups for one optimizer step; advances the data position in `state`."""
    cfg = session.config
    examples = session.data.splits.train

    def groups_of(epoch: int) -> list[list[int]]:  # made once per epoch (this runs twice a step: BatchesAhead)
        cache = session.epoch_groups
        if epoch not in cache:
            for older in [e for e in cache if e < epoch - 1]:  # keep the one before: a step may start there
                del cache[older]
            if cfg.training.packing:  # one micro-batch = one best-fit bin of batch_size x max_length tokens
                cache[epoch] = packed_epoch_groups(examples, cfg.training.batch_size * cfg.model.max_length, cfg.seed, epoch)
            else:
                cache[epoch] = epoch_groups(examples, cfg.training.batch_size, cfg.seed, epoch)
        return cache[epoch]

    groups = groups_of(state.epoch)
    chosen = []
    for _ in range(cfg.training.gradient_accumulation_steps):
        if state.batch_in_epoch >= len(groups):
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
            groups = groups_of(state.epoch)
        chosen.append(groups[state.batch_in_epoch])
        state.batch_in_epoch += 1
    return chosen


def _numerical_fault(session: TrainingSession, step: int, groups: list[list[int]], what: str) -> TrainingError:
    return numerical_fault(session.data.splits.train, session.dtype, step, groups, what)


def _train_step(session, groups, params, optimizer, scheduler, scaler, step, prepare_next=None) -> tuple[float, int]:
    """One optimizer step over several micro-batches; loss is normalised by the step's answer tokens, so
    micro-batch 1 x accumulation 4 equals micro-batch 4 x accumulation 1. `prepare_next` runs once the last
    backward pass is queued, before this step's sync (BatchesAhead)."""
    cfg = session.config.training
    batches = [session.ahead.take(session, group) for group in groups]
    objective = session.objective
    # the step's answer tokens (preference tuning: its pairs)
    target_tokens = sum(objective.targets(batch) if objective else len(batch[LOSS_POSITIONS]) for batch in batches)
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
            seen_tokens += int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
        batch = {k: v.to(session.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        try:  # a CUDA out-of-memory error is retried by _step_with_oom_retry, on every rank together
            with autocast, activation_offload(session.offload_activations):
                if objective is not None:
                    loss = objective.loss(session, batch, target_tokens)
                else:
                    loss = (session.sharded_root(batch, target_tokens) if sharded  # no full-vocab logits either way
                            else causal_lm_loss(session.model, batch, num_items_in_batch=target_tokens))
            loss = loss if real else loss * 0.0
            # (Under fsdp every rank must still run backward; with one sync the step's sum is checked below.)
            if not host_overlap and not sharded and not torch.isfinite(loss):
                step_loss += float(loss.detach())  # the summed loss below stops every rank with one message
                break
            (scaler.scale(loss) if scaler is not None else loss).backward()  # under fsdp this sums the gradients
        except torch.OutOfMemoryError:
            if sharded:
                raise _sharded_out_of_memory(session, step) from None
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
            ranks.sum_gradients_(params)
    if scaler is not None:
        scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or math.inf)
    if host_overlap:  # the step's one sync: loss and gradient norm come to the host together
        step_loss, norm = torch.stack([torch.stack(losses).double().sum(), grad_norm.double()]).tolist()
    else:
        norm = float(grad_norm)
    if not math.isfinite(step_loss):
        raise _numerical_fault(session, step, groups, f"The loss became {step_loss}")
    if scaler is None and not math.isfinite(norm):
        raise _numerical_fault(session, step, groups, f"The gradient norm became {norm}")
    if step_loss == 0.0 and target_tokens > 0:
        # Cross-entropy over answer tokens is exactly 0 only when nothing is left to learn from (every gradient
        # is 0): a broken loss or labels, or logits so saturated that the run has collapsed. Silently continuing
        # would log a perfect loss for a run that no longer trains.
        raise _numerical_fault(session, step, groups, "The loss became exactly 0.0 (every gradient is zero)")
    try:
        if scaler is not None:
            scaler.step(optimizer)  # skips the step on inf/nan gradients and lowers the scale
            scaler.update()
            if scaler.get_scale() < MIN_LOSS_SCALE:
                raise _numerical_fault(session, step, groups, f"The fp16 loss scale fell to {scaler.get_scale()} "
                                       "(the gradients overflow even unscaled)")
        else:
            optimizer.step()
    except torch.OutOfMemoryError:
        # The update may be half-applied in memory: never retried, never saved; the last checkpoint stays.
        raise TrainingError(f"Out of memory in the optimizer update at step {step}. The last checkpoint is kept.",
                            hint=OOM_ADVICE) from None
    scheduler.step()
    optimizer.zero_grad(set_to_none=not keeps_gradients_allocated(session.device, sharded=sharded))
    return step_loss, seen_tokens


def _sharded_out_of_memory(session: TrainingSession, step: int) -> TrainingError:
    """Out of memory under fsdp stops the run: the other ranks wait inside this pass's weight gathers, which
    this rank can no longer join, so the micro-batch cannot be halved on all ranks together. The launcher
    stops the others when this rank exits; this rank says why (ranks other than 0 print only errors)."""
    error = TrainingError(f"Out of memory at step {step} under training.distributed fsdp (process "
                          f"{session.ranks.rank}). The last checkpoint is kept.",
                          hint="Set training.batch_size lower or training.gradient_checkpointing: true (`lorakit plan "
                          "CONFIG --gpus N` shows the plan per GPU), then continue with `lorakit train CONFIG --resume`.")
    if not session.ranks.is_main:
        log.error("%s %s", error.message, error.hint)
    return error


def _pieces(session: TrainingSession, state: TrainerState, groups: list[list[int]]) -> list[list[int]]:
    """A step's groups cut to the micro-batch the run uses now (smaller after an out-of-memory retry)."""
    training = session.config.training
    return split_into_micro_batches(groups, state.micro_batch_size or training.batch_size, training.batch_size,
                                    examples=session.data.splits.train, packed=training.packing,
                                    max_length=session.config.model.max_length)


def make_next_batches(session: TrainingSession, state: TrainerState) -> None:
    """Collate the micro-batches of the step after `state.step + 1` into `session.ahead` (from a copy of the data
    position: `state` does not move); `_train_step` calls it while the GPU runs the backward pass."""
    if state.step + 2 <= session.config.training.max_steps:
        session.ahead.make(session, _pieces(session, state, _next_micro_batches(session, replace(state))))


def _step_with_oom_retry(session, state, groups, position, params, optimizer, scheduler, scaler, reporter, run_dir):
    """One optimizer step. A CUDA out-of-memory error in forward/backward re-plans (training/oom_replan.py: more
    checkpointed layers, offload, or a smaller micro-batch, whichever the planner finds fastest in the memory
    there is) or, when no plan needs less memory, halves the micro-batch; then it re-runs the same step on the
    same examples. At micro-batch 1 with no plan left it saves a checkpoint of the state before the step and
    stops with advice."""
    cfg = session.config
    rng = TorchRngSnapshot.capture()

    while True:
        micro = state.micro_batch_size or cfg.training.batch_size
        pieces = _pieces(session, state, groups)
        try:
            return _train_step(session, pieces, params, optimizer, scheduler, scaler, state.step + 1,
                               lambda: make_next_batches(session, state))
        except torch.OutOfMemoryError:
            pass  # handled below, once the exception (and the failed step's tensors it references) is gone
        release_memory(optimizer)
        rng.restore()
        replanned = replan_after_oom(session, state, state.step + 1)
        if replanned is not None:
            reporter.message(replanned)  # said once, like the halving below
            continue
        if micro == 1:
            state.epoch, state.batch_in_epoch = position  # the failed step is re-run after --resume
            state.micro_batch_size = state.gradient_accumulation_steps = None  # retry as configured after a fix
            state.checkpointed_layers = state.offload_activations = None
            path = _save_checkpoint(session, run_dir, optimizer, scheduler, scaler, state)
            session.ranks.barrier()  # no rank exits (and has the launcher stop rank 0) before the save is done
            examples = session.data.splits.train
            longest = max((examples[i] for group in groups for i in group), key=lambda e: len(e.input_ids))
            raise TrainingError(f"Out of memory at step {state.step + 1} even with micro-batch 1. Saved a resumable "
                                f"checkpoint at {path}. The step's longest example is {longest.source}:{longest.line} "
                                f"({len(longest.input_ids)} tokens).", hint=OOM_ADVICE)
        state.micro_batch_size = halved(micro)
        state.gradient_accumulation_steps = accumulation_after_split(
            cfg.training.gradient_accumulation_steps, cfg.training.batch_size, state.micro_batch_size)
        message = (f"out of memory at step {state.step + 1} with micro-batch {micro}: retrying the step with micro-batch "
                   f"{state.micro_batch_size} and {state.gradient_accumulation_steps} accumulation steps "
                   "(same examples per optimizer step)")
        reporter.message(message)  # said once: the CLI prints the reporter's messages (no log line as well)


def _run_steps(session, state, stopper, params, optimizer, scheduler, scaler, sink, reporter, run_dir) -> bool:
    cfg = session.config.training
    if state.stopped_early:
        return True
    reporter.start(cfg.max_steps, state.step)
    window_tokens, window_start = 0, time.perf_counter()
    while state.step < cfg.max_steps:
        position = (state.epoch, state.batch_in_epoch)
        groups = _next_micro_batches(session, state)
        loss, tokens = _step_with_oom_retry(session, state, groups, position, params, optimizer, scheduler, scaler,
                                            reporter, run_dir)
        state.step += 1
        state.window_loss, state.window_steps = state.window_loss + loss, state.window_steps + 1
        window_tokens += tokens
        record = {"step": state.step}
        if state.step % cfg.logging_steps == 0 or state.step == cfg.max_steps:
            elapsed = time.perf_counter() - window_start
            record.update(train_loss=state.window_loss / state.window_steps, learning_rate=scheduler.get_last_lr()[0],
                          tokens_per_second=window_tokens / max(elapsed, 1e-9), epoch=state.epoch,
                          **(session.objective.logged_metrics() if session.objective else {}))
            state.window_loss, state.window_steps, window_tokens, window_start = 0.0, 0, 0, time.perf_counter()
        stop = False
        if session.data.splits.validation and (state.step % cfg.eval_steps == 0 or state.step == cfg.max_steps):
            val_loss = shared_split_loss(session.ranks, session.loss_model, session.data.splits.validation,
                                         sharded=session.sharded,
                                         batch_size=state.micro_batch_size or cfg.batch_size,
                                         pad_token_id=session.tokenizer.pad_token_id,
                                         autocast_dtype=session.autocast_dtype)
            stop = stopper.update(state.step, val_loss)
            record["val_loss"] = val_loss
        if len(record) > 1:
            state.log_history.append(record)
            sink.write(record)
        reporter.step(state.step, record)
        state.early_stopping = stopper.state_dict()
        if stop:
            reporter.message(f"early stopping at step {state.step}: validation loss has not improved for "
                             f"{stopper.patience} evaluations (best {stopper.best_loss:.4f} at step {stopper.best_step})")
            state.stopped_early = True
            return True
        # A new best is saved too while early stopping is on: final/ ships it if patience runs out (early_stop.py).
        saves_best = stopper.enabled and stopper.improved_at(state.step)
        if (state.step % cfg.save_steps == 0 or saves_best) and state.step < cfg.max_steps:
            _save_checkpoint(session, run_dir, optimizer, scheduler, scaler, state)  # every rank: fsdp gathers
    return False
