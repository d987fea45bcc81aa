"""The planner's search: every candidate setting (micro-batch x checkpointed layers x quantization, offload and the
tiled MLP as last resorts) with its memory estimate (plan/memory.py) and a relative step time, fitting ones first,
fastest first. plan/run_plan.py picks the first for a new run, plan/oom.py one that needs less after an
out-of-memory error.

The speed model only ranks candidates; it is not a prediction of tokens/s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from lorakit.plan.memory import MemoryEstimate, TrainSettings, estimate_peak_memory
from lorakit.plan.model_shape import ModelShape

__all__ = ["Candidate", "relative_step_time", "plan_settings", "micro_batch_choices", "micro_batch_settings",
           "candidate_order", "MAX_TOKENS_PER_MICRO_BATCH"]

# Micro-batches past this many tokens barely speed up a step; bigger ones only cost memory.
MAX_TOKENS_PER_MICRO_BATCH = 8192


def relative_step_time(shape: ModelShape, settings: TrainSettings) -> float:
    """Seconds per token up to a constant, for ranking only: recompute costs a forward pass (+50% of a LoRA
    step's matmuls) per checkpointed layer, so n of L layers cost n/L of that; small micro-batches underuse
    the GPU, nf4 dequantizes each weight twice per step, and offload waits on PCIe."""
    recompute = 1 + 0.5 * settings.checkpointed_layers / shape.layers
    # A micro-batch has a fixed cost (kernel launches; nf4 dequantizes every weight per pass): measured on an
    # H100, ~0.45 s per QLoRA micro-batch whatever its length from 2k to 8k tokens, so nf4 wants big ones. On an
    # H200 capped to 8 GB, 16 rows of 512 per step as 1 x 16, 2 x 8, 4 x 4 and 8 x 2 micro-batches (fewer layers
    # checkpointed as they shrink) ran 0.46, 0.46, 0.36 and 0.28 s per micro-batch (bench/results/
    # peer_speed_levers/run5_check): the plan's one micro-batch of 16 was 2x the next fastest.
    fixed_tokens = 8192 if settings.quantization == "nf4" else 1024
    utilisation = settings.tokens_per_micro_batch / (settings.tokens_per_micro_batch + fixed_tokens)
    quantized = 1.3 if settings.quantization == "nf4" else 1.0
    offload = 1.35 if settings.offload_activations else 1.0  # measured: +36% per step on an H100 (bench/results)
    # An assumption until bench/long_context.py measures it: the MLP is ~2/3 of a layer's matmuls, run once more
    # in backward, in a step of ~4 forward passes' work with every layer recomputed (+2/3 / 4).
    tiled = 1.17 if settings.tiled_mlp else 1.0
    return recompute * quantized * offload * tiled / utilisation


@dataclass(frozen=True)
class Candidate:
    settings: TrainSettings
    micro_batch: int
    estimate: MemoryEstimate
    relative_time: float
    fits: bool


def plan_settings(
    shape: ModelShape,
    base: TrainSettings,
    *,
    max_length: int,
    gpu_memory_bytes: int,
    micro_batches: tuple[int, ...] | None = None,
    checkpointed_layers: tuple[int, ...] | None = None,
    quantizations: tuple[str, ...] | None = None,
    estimate: Callable[[ModelShape, TrainSettings], MemoryEstimate] | None = None,
    tiling: bool = True,
    bin_positions: Callable[[int], int] | None = None,
    micro_batch_layout: Callable[[int], tuple[int, int]] | None = None,
    data_rows: int | None = None,
) -> list[Candidate]:
    """Every candidate (micro-batch x checkpointed layers x quantization, and offload with every layer
    checkpointed), fitting ones first, fastest first; the first one with `fits` is the plan. Offload comes
    after every fitting candidate without it: it only serves when nothing else fits, and the tiled MLP (on top of
    offload; `tiling` False: never, as for several processes) only when offload alone does not fit. Fixed settings are
    passed as one-element tuples (`checkpointed_layers`: default every count from 0 to all). `estimate`: the
    memory of one GPU for a candidate (default `estimate_peak_memory`; fsdp's per-GPU one in plan/sharded.py).
    `bin_positions`: packed SFT rows with shared prefixes (data/shared_packing.py): the most positions a packed row
    of n tokens computes; a candidate then counts those positions, and attention's gathered keys (at most the
    row's n real tokens), instead of n positions. `micro_batch_layout`: shared-prefix preference pairs
    (data/preference_batch.PairLayout.micro_batch): micro-batch size -> the most positions and keys of such a
    micro-batch, which a candidate then counts. `data_rows` (when the data is known): the most rows a micro-batch of
    the training data can fill (`micro_batch_choices`)."""
    estimate = estimate or estimate_peak_memory
    micro_batches = micro_batches or micro_batch_choices(max_length, data_rows)
    checkpointed_layers = checkpointed_layers or tuple(range(shape.layers + 1))
    quantizations = quantizations or (base.quantization,)
    candidates = []
    for quantization in quantizations:
        for micro_batch in micro_batches:
            layout = micro_batch_layout(micro_batch) if micro_batch_layout else None
            row = micro_batch_settings(replace(base, quantization=quantization), micro_batch * max_length,
                                       bin_positions, layout)
            for layers in checkpointed_layers:
                for offload, tiled in _memory_savers(layers == shape.layers, tiling):
                    settings = replace(row, checkpointed_layers=layers, offload_activations=offload, tiled_mlp=tiled)
                    memory = estimate(shape, settings)
                    candidates.append(Candidate(settings, micro_batch, memory, relative_step_time(shape, settings),
                                                memory.peak_on_gpu() <= gpu_memory_bytes))
    return sorted(candidates, key=candidate_order)


def micro_batch_choices(max_length: int, data_rows: int | None = None) -> tuple[int, ...]:
    """The micro-batches the planner tries: powers of two up to MAX_TOKENS_PER_MICRO_BATCH tokens of `max_length`
    rows (1 whatever the length), none past the `data_rows` rows the training data can fill (its examples, pairs, or
    packed rows): a micro-batch of 16 on 5 examples trains on 5 while the plan says 16 and counts memory for 16.

    >>> micro_batch_choices(512), micro_batch_choices(512, data_rows=5), micro_batch_choices(4096, data_rows=1)
    ((1, 2, 4, 8, 16), (1, 2, 4, 5), (1,))
    """
    choices = [m for m in (1, 2, 4, 8, 16, 32, 64) if m == 1 or m * max_length <= MAX_TOKENS_PER_MICRO_BATCH]
    if data_rows:
        choices = sorted({min(m, data_rows) for m in choices})
    return tuple(choices)


def micro_batch_settings(base: TrainSettings, tokens: int, bin_positions: Callable[[int], int] | None = None,
                         layout: tuple[int, int] | None = None) -> TrainSettings:
    """`base` for a micro-batch of `tokens` tokens; with `bin_positions` (packed rows with shared prefixes), the
    positions such a row computes at most, and the keys attention gathers (the row's real tokens, at most `tokens`);
    with `layout` (shared-prefix preference pairs), its (positions, keys).

    >>> base = TrainSettings("nf4", 2, 16, "all-linear", True, tokens_per_micro_batch=512)
    >>> row = micro_batch_settings(base, 8192, lambda tokens: tokens * 5 // 8)
    >>> row.tokens_per_micro_batch, row.keys_per_token, micro_batch_settings(base, 8192).keys_per_token
    (5120, 1.6, 1.0)
    >>> pairs = micro_batch_settings(base, 4 * 1513, layout=(4274, 5945))
    >>> pairs.tokens_per_micro_batch, round(pairs.keys_per_token, 3)
    (4274, 1.391)
    """
    if layout is not None:
        return replace(base, tokens_per_micro_batch=layout[0], keys_per_token=layout[1] / layout[0])
    if bin_positions is None:
        return replace(base, tokens_per_micro_batch=tokens)
    positions = bin_positions(tokens)
    return replace(base, tokens_per_micro_batch=positions, keys_per_token=tokens / positions)


def _memory_savers(all_checkpointed: bool, tiling: bool) -> tuple[tuple[bool, bool], ...]:
    """(offload, tiled MLP) pairs a candidate may take: both need every layer checkpointed; tiling comes on top of
    offload, for lengths where one layer's MLP is what no longer fits."""
    if not all_checkpointed:
        return ((False, False),)
    return ((False, False), (True, False)) + (((True, True),) if tiling else ())


def candidate_order(candidate: Candidate) -> tuple:
    """Sort key of the plan: fitting first, offload only after every fitting plan without it, the tiled MLP only
    after every fitting plan without it, then fastest, and among equally fast the one that leaves the most memory."""
    return (not candidate.fits, candidate.settings.offload_activations, candidate.settings.tiled_mlp,
            round(candidate.relative_time, 3), candidate.estimate.peak_allocated)
