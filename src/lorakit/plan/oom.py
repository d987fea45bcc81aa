"""After a CUDA out-of-memory error: free the failed step's memory and replay its randomness for the retry, ask
the memory planner for the fastest settings that fit the memory the GPU really has, for the same examples per
optimizer step, and switch the live model to them; when nothing helps, tell the user what to change
(`OOM_ADVICE`).

Halving the micro-batch alone (plan/micro_batches.py) is the slow way down: on an emulated 8 GB card a fixed
micro-batch of 64 without checkpointing halved six times to 2 and ran at a quarter of the planner's speed
(issue 11). The planner instead weighs checkpointing more layers (and, last, offloading them) against smaller
micro-batches, with the same speed model it plans runs with. Every re-plan must need less memory than the
settings that failed, so retries end: when no such plan fits, the loop halves as before.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, replace

import torch

from lorakit.model.checkpointing import apply_checkpointing, decoder_layers, reentrant_checkpoints
from lorakit.model.dequantized_weights import drop_dequantized_weights
from lorakit.model.load import read_model_config
from lorakit.plan.candidates import Candidate, micro_batch_settings, plan_settings
from lorakit.plan.config_view import pair_micro_batches, planned_length, shared_bin_positions, train_settings
from lorakit.plan.memory import (
    CUDA_CONTEXT_BYTES,
    GIB,
    TrainSettings,
    checkpointing_text,
    estimate_peak_memory,
)
from lorakit.plan.micro_batches import accumulation_after_split
from lorakit.plan.model_shape import ModelShape
from lorakit.plan.run_plan import device_memory_bytes

__all__ = ["OOM_ADVICE", "release_memory", "TorchRngSnapshot", "MemorySettings", "training_memory_bytes",
           "replan_for_memory", "replan_after_oom", "restore_memory_settings", "computed_config"]

OOM_ADVICE = (
    "To use less memory per step: turn on training.gradient_checkpointing (true or 'auto'), or use QLoRA "
    "(model.quantization: nf4), then continue with `lorakit train CONFIG --resume`; or start a new run with a "
    "shorter model.max_length (it changes the data, so it cannot resume this run)."
)


def release_memory(optimizer: torch.optim.Optimizer) -> None:
    """Drop the failed step's gradients and return cached blocks to the allocator."""
    optimizer.zero_grad(set_to_none=True)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class TorchRngSnapshot:
    """torch's CPU and CUDA generator states, so a retried step draws the same dropout randomness as its
    first attempt, and a checkpoint saved after a failed step matches the state before it."""

    cpu: torch.Tensor
    cuda: list[torch.Tensor]

    @classmethod
    def capture(cls) -> TorchRngSnapshot:
        return cls(torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda:
            torch.cuda.set_rng_state_all(self.cuda)


@dataclass(frozen=True)
class MemorySettings:
    """What a retry may change: micro-batch, checkpointed layers (the first n), CPU offload."""

    micro_batch: int
    checkpointed_layers: int
    offload_activations: bool


def training_memory_bytes(device: torch.device) -> int | None:
    """The card the planner may plan a retry for: what PyTorch's allocator could hold now (free memory + what it
    holds after the failed step's release), capped by a per-process limit, plus the CUDA context that the fit
    check sets aside. None on CPU: there the operating system, not an exception, answers a lack of memory."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return min(device_memory_bytes(cuda=True), free + torch.cuda.memory_reserved(device) + CUDA_CONTEXT_BYTES)


def replan_for_memory(shape: ModelShape, base: TrainSettings, current: MemorySettings, *, max_length: int,
                      memory_bytes: int, bin_positions=None, micro_batch_layout=None) -> Candidate | None:
    """The planner's fastest candidate that fits `memory_bytes` and needs less than `current` (which just ran out
    of memory), with micro-batches no bigger than the current one; None when there is none. `bin_positions` and
    `micro_batch_layout`: as plan_settings takes them (packed SFT rows, preference pairs, with shared prefixes)."""
    failed = estimate_peak_memory(shape, replace(
        micro_batch_settings(base, current.micro_batch * max_length, bin_positions,
                             micro_batch_layout(current.micro_batch) if micro_batch_layout else None),
        checkpointed_layers=current.checkpointed_layers, offload_activations=current.offload_activations))
    micro_batches = tuple(sorted({current.micro_batch} | {m for m in (1, 2, 4, 8, 16, 32) if m < current.micro_batch}))
    candidates = plan_settings(shape, base, max_length=max_length, gpu_memory_bytes=memory_bytes,
                               micro_batches=micro_batches, bin_positions=bin_positions,
                               micro_batch_layout=micro_batch_layout)
    # A re-plan switches checkpointing and offload on the loaded model, never the tiled MLP: a length that needs
    # it is planned with it from the start.
    return next((c for c in candidates if c.fits and not c.settings.tiled_mlp
                 and c.estimate.peak_allocated < failed.peak_allocated), None)


def _live_settings(session, state) -> MemorySettings:
    layers = decoder_layers(session.model)
    return MemorySettings(state.micro_batch_size or session.config.training.batch_size,
                          sum(layer.gradient_checkpointing for layer in layers), session.offload_activations)


def computed_config(session):
    """The session's config as its batches are computed: training.shared_prefix off where the model could not take
    the shared layout (training/session.takes_shared_prefixes fell back to padded pairs or whole packed examples),
    so a re-plan counts the rows that really ran out of memory, not the fewer positions the config asked for."""
    config = session.config
    if session.shared_prefix or not config.training.shared_prefix:
        return config
    return config.model_copy(update={"training": config.training.model_copy(update={"shared_prefix": False})})


def replan_after_oom(session, state, step: int) -> str | None:
    """Re-plan after an out-of-memory error in `step`: switch the model's checkpointing/offload and the
    micro-batch in `state` (a checkpoint saves them, so a resume keeps them); returns the message that says
    what changed, or None when no plan that needs less memory fits (then the caller halves). Weights kept
    dequantized (plan/dequantized.py) go first, alone: they were the last thing the plan spent memory on."""
    layers, freed = drop_dequantized_weights(session.model)
    if layers:
        live = _live_settings(session, state)  # recorded as a re-plan, so that a resume keeps them dropped
        state.checkpointed_layers, state.offload_activations = live.checkpointed_layers, live.offload_activations
        return (f"out of memory at step {step}: dropped the dequantized weights kept for {layers} layers "
                f"({freed / GIB:.1f} GiB), retrying the step with the same settings")
    memory_bytes = training_memory_bytes(session.device)
    if memory_bytes is None:
        return None
    memory_bytes = int(session.ranks.agree([memory_bytes], op="min")[0])  # every rank takes the same plan
    config = computed_config(session)
    shape = ModelShape.from_config(read_model_config(session.source))
    base = train_settings(config, "nf4" if session.quantized else "none",
                          dtype_bytes=torch.finfo(session.dtype).bits // 8, cuda=session.device.type == "cuda",
                          pairs=session.pair_layout, longest_example=session.data.longest_example)
    before = _live_settings(session, state)
    length = planned_length(config, session.data.longest_example, session.pair_layout)
    chosen = replan_for_memory(shape, base, before, max_length=length, memory_bytes=memory_bytes,
                               bin_positions=shared_bin_positions(config, session.data.prefix_sharing, replanning=True),
                               micro_batch_layout=pair_micro_batches(config, session.pair_layout, replanning=True))
    if chosen is None:
        return None
    after = MemorySettings(chosen.micro_batch, chosen.settings.checkpointed_layers, chosen.settings.offload_activations)
    _apply(session, state, after.checkpointed_layers, after.offload_activations)
    training = config.training
    if after.micro_batch != before.micro_batch:
        state.micro_batch_size = after.micro_batch
        state.gradient_accumulation_steps = accumulation_after_split(
            training.gradient_accumulation_steps, training.batch_size, after.micro_batch)
    was = checkpointing_text(before.checkpointed_layers, shape.layers, before.offload_activations)
    now = checkpointing_text(after.checkpointed_layers, shape.layers, after.offload_activations)
    return (f"out of memory at step {step} with micro-batch {before.micro_batch} and checkpointing {was}: re-planned "
            f"for the {memory_bytes / GIB:.1f} GiB this device has, retrying the step with checkpointing {now} and "
            f"micro-batch {after.micro_batch} (same examples per optimizer step)")


def _apply(session, state, checkpointed_layers: int, offload_activations: bool) -> None:
    apply_checkpointing(session.model, checkpointed_layers,
                        reentrant=reentrant_checkpoints(offload_activations, session.sharded))
    session.offload_activations = offload_activations
    state.checkpointed_layers, state.offload_activations = checkpointed_layers, offload_activations


def restore_memory_settings(session, state) -> None:
    """On resume: the checkpointing/offload an out-of-memory re-plan chose, saved in the trainer state, and no weights
    kept dequantized (the re-plan dropped them first)."""
    if state.checkpointed_layers is not None:
        drop_dequantized_weights(session.model)
        _apply(session, state, state.checkpointed_layers, state.offload_activations)
