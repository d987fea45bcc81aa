"""The planner's last lever, on a GPU with room to spare: QLoRA's frozen 4-bit weights also kept dequantized for the
run (model/dequantized_weights.py), so that no step dequantizes them again.

bitsandbytes dequantizes each nf4 weight in every forward pass, again in every checkpoint recompute and again in
backward, although the weights are frozen and the values are the same every step. On the whole H100 that was the
difference between lorakit's QLoRA step (28,273 tok/s) and its bf16 LoRA step (29,573 tok/s; bench/results/
peer_speed_honest/table_h100_session10). Keeping the dequantized copy costs its bytes in the compute dtype (the 4-bit
weight stays, for the adapter's export and merge): 6.0 GiB for Phi-4-mini's 32 decoder layers.

The lever spends only what the chosen plan leaves, and only where memory constrained none of its choices
(`memory_to_spare`): micro-batch, checkpointing and offload are chosen first and never change for it, so it can never
cost a run speed it would otherwise have. The first decoder layers are kept first:
those are the checkpointed ones, which dequantize three times per step instead of two. After an out-of-memory error
the re-plan drops it first (plan/oom.py). Only for one process on CUDA (not under ddp/fsdp, where it is untested);
`LORAKIT_DISABLE=dequantized_weights` plans without it (the benchmark's row without the lever).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from lorakit.config import RunConfig
from lorakit.data.preference_batch import PairLayout
from lorakit.data.shared_packing import PrefixSharing
from lorakit.plan.candidates import Candidate, micro_batch_settings, relative_step_time
from lorakit.plan.config_view import planned_length, shared_bin_positions, train_settings
from lorakit.plan.memory import GIB, MemoryEstimate, TrainSettings, estimate_peak_memory
from lorakit.plan.model_shape import ModelShape
from lorakit.runtime.ablation import enabled

__all__ = ["memory_to_spare", "keep_dequantized_layers", "dequantized_text", "fixed_settings_candidate",
           "FIXED_SETTINGS_SHARE"]

# Fixed settings were chosen by the user, not by the planner, so nothing says the memory they leave is spare: the lever
# may fill only this share of the GPU there, which keeps the planner's 10% prediction margin free (without it, batch 1
# with checkpointing at 4,096 tokens on an 8 GB card kept 11 layers up to a predicted 7.97 of 8 GiB).
FIXED_SETTINGS_SHARE = 0.9


def memory_to_spare(chosen: Candidate, candidates: list[Candidate]) -> bool:
    """Whether memory decided none of the plan's choices: `chosen` is as fast as any candidate, fitting or not. On
    the 8 GB card the plan checkpoints layers, offloads or shrinks the micro-batch to fit, and the little it leaves
    is the planner's margin on activations it predicts within 10% (a 16k-token row measured 7.97 GiB of 8): there
    the lever keeps nothing. On the whole GPU nothing was given up, and what is left is spare."""
    return round(chosen.relative_time, 3) <= min(round(candidate.relative_time, 3) for candidate in candidates)


def keep_dequantized_layers(shape: ModelShape, chosen: Candidate, gpu_memory_bytes: int,
                            estimate: Callable[[ModelShape, TrainSettings], MemoryEstimate] | None = None) -> Candidate:
    """`chosen` with the most decoder layers' weights kept dequantized that still fit `gpu_memory_bytes` (all, some
    or none), its estimate counting them; `chosen` itself where it is not nf4, does not fit, or the lever is off."""
    if chosen.settings.quantization != "nf4" or not chosen.fits or not enabled("dequantized_weights"):
        return chosen
    estimate = estimate or estimate_peak_memory
    for layers in range(shape.layers, 0, -1):  # the estimate grows with each layer: the first that fits is the most
        settings = replace(chosen.settings, dequantized_layers=layers)
        memory = estimate(shape, settings)
        if memory.peak_on_gpu() <= gpu_memory_bytes:
            return replace(chosen, settings=settings, estimate=memory)
    return chosen


def dequantized_text(estimate: MemoryEstimate, settings: TrainSettings, layers: int) -> str:
    """How a plan names the lever.

    >>> from lorakit.plan.memory import MemoryEstimate
    >>> memory = MemoryEstimate(0, 0, 0, 0, 0, 0, dequantized_weights=6 * GIB)
    >>> settings = TrainSettings("nf4", 2, 16, "all-linear", False, 8192, dequantized_layers=32)
    >>> dequantized_text(memory, settings, 32)
    'dequantized weights kept: 32 of 32 layers, 6.0 GiB'
    >>> dequantized_text(MemoryEstimate(0, 0, 0, 0, 0, 0), replace(settings, dequantized_layers=0), 32)
    'dequantized weights kept: none'
    """
    if not settings.dequantized_layers:
        return "dequantized weights kept: none"
    return (f"dequantized weights kept: {settings.dequantized_layers} of {layers} layers, "
            f"{estimate.dequantized_weights / GIB:.1f} GiB")


def fixed_settings_candidate(config: RunConfig, shape: ModelShape, gpu_memory_bytes: int, *, dtype_bytes: int,
                             longest_example: int | None, pairs: PairLayout | None,
                             sharing: PrefixSharing | None) -> Candidate:
    """An nf4 run whose micro-batch and checkpointing are fixed in its config (nothing `auto`): those very settings as
    the plan's candidate, so that the memory they leave can keep weights dequantized. Counted as plan/run_plan.py
    counts a planned run (the micro-batch's tokens, shared-prefix rows)."""
    training = config.training
    base = train_settings(config, "nf4", dtype_bytes=dtype_bytes, cuda=True, pairs=pairs,
                          longest_example=longest_example)
    length = planned_length(config, longest_example, pairs)
    settings = replace(micro_batch_settings(base, training.batch_size * length, shared_bin_positions(config, sharing)),
                       checkpointed_layers=shape.layers if training.gradient_checkpointing else 0)
    memory = estimate_peak_memory(shape, settings)
    return Candidate(settings, training.batch_size, memory, relative_step_time(shape, settings),
                     memory.peak_on_gpu() <= gpu_memory_bytes)
