"""From a RunConfig and the model's config.json to concrete training settings: the memory planner applied
to `auto` settings (quantization, micro-batch, gradient checkpointing) for one GPU's memory."""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

from lorakit.config import RunConfig
from lorakit.data.preference_batch import PairLayout
from lorakit.data.shared_packing import PrefixSharing
from lorakit.errors import ConfigError
from lorakit.plan.candidates import Candidate, plan_settings
from lorakit.plan.config_view import pair_micro_batches, planned_length, shared_bin_positions, train_settings
from lorakit.plan.dequantized import (
    FIXED_SETTINGS_SHARE,
    dequantized_text,
    fixed_settings_candidate,
    keep_dequantized_layers,
    memory_to_spare,
)
from lorakit.plan.memory import (
    CUDA_CONTEXT_BYTES,
    GIB,
    checkpointing_text,
    estimate_peak_memory,
)
from lorakit.plan.micro_batches import cpu_micro_batch_size
from lorakit.plan.model_config_json import check_max_length, read_model_config_json
from lorakit.plan.model_shape import ModelShape
from lorakit.plan.sharded import choose_distributed, sharded_estimate

__all__ = [
    "TrainingPlan",
    "ResolvedSettings",
    "plan_training",
    "refusal_advice",
    "resolve_auto_settings",
    "device_memory_bytes",
    "parse_memory_size",
    "plan_run",
]


@dataclass(frozen=True)
class TrainingPlan:
    quantization: str  # "nf4" or "none"
    micro_batch: int
    checkpointed_layers: int  # the first n decoder layers (model/checkpointing.py); 0 = none
    offload_activations: bool
    chosen: Candidate
    candidates: list[Candidate]
    gpu_memory_bytes: int
    layers: int  # decoder layers of the model
    tiled_mlp: bool = False  # MLPs in sequence chunks (model/tiled_mlp.py)

    @property
    def checkpointing_text(self) -> str:
        return checkpointing_text(self.checkpointed_layers, self.layers, self.offload_activations, self.tiled_mlp)

    @property
    def dequantized_layers(self) -> int:
        """nf4: the first n decoder layers whose weights are also kept dequantized (plan/dequantized.py)."""
        return self.chosen.settings.dequantized_layers

    @property
    def dequantized_text(self) -> str | None:
        """'dequantized weights kept: 32 of 32 layers, 6.0 GiB' (or 'none') for an nf4 plan; None otherwise."""
        if self.quantization != "nf4":
            return None
        return dequantized_text(self.chosen.estimate, self.chosen.settings, self.layers)


def parse_memory_size(text: str) -> int:
    """'8GB', '8GiB', '7.5G', '8000MB' or a bare number of GiB -> bytes. GB means GiB, as GPUs are sold.

    >>> parse_memory_size("8GB") == parse_memory_size("8") == 8 * 1024**3
    True
    >>> parse_memory_size("512MiB")
    536870912
    """
    cleaned = text.strip().upper().removesuffix("B").removesuffix("I")
    units = {"G": GIB, "M": 1024**2, "T": 1024**4}
    scale = units.get(cleaned[-1:], None)
    number = cleaned[:-1] if scale else cleaned
    try:
        value = float(number) * (scale or GIB)
    except ValueError:
        raise ConfigError("--gpu-memory", [f"'{text}' is not a memory size; write e.g. 8GB or 12GiB"]) from None
    if value <= 0:
        raise ConfigError("--gpu-memory", [f"'{text}' must be positive"])
    return int(value)


def plan_training(config: RunConfig, model_config: dict, gpu_memory_bytes: int, *, dtype_bytes: int,
                  nf4_available: bool, cuda: bool = True, longest_example: int | None = None, sharded_over: int = 1,
                  single_process: bool = True, pairs: PairLayout | None = None,
                  sharing: PrefixSharing | None = None, data_rows: int | None = None) -> TrainingPlan:
    """Resolve `auto` settings to the fastest that fit `gpu_memory_bytes`; fixed settings stay as given.

    `longest_example` (tokens, when the data is known): without packing a micro-batch is padded to its longest
    example, not to max_length; `pairs`: what preference pairs put in a shared-prefix micro-batch (with the run's
    data order where the session knows it: data/preference_batch.PairLayout). On CPU the estimate is the process's
    peak RSS (plan/host_memory.py) for the pieces that CPU training cuts each micro-batch into
    (plan/micro_batches.py's cpu_micro_batch_size).
    `single_process`: the tiled MLP is planned only then (its nested backward passes are untested under ddp/fsdp).
    `sharing` (packed SFT with training.shared_prefix, when the data is known): a packed row is counted as the
    positions it computes with its examples' shared prefix once (data/shared_packing.py), not its capacity.
    `data_rows` (when the data is known: training/dataset.PreparedData.rows_to_fill): an `auto` micro-batch is at
    most the rows the training data fills (plan/candidates.micro_batch_choices)."""
    training = config.training
    length = planned_length(config, longest_example, pairs)
    shape = ModelShape.from_config(model_config)
    quantization = config.model.quantization
    quantizations = (("none", "nf4") if nf4_available else ("none",)) if quantization == "auto" else (quantization,)
    base = train_settings(config, quantizations[0], dtype_bytes=dtype_bytes, cuda=cuda, pairs=pairs,
                          longest_example=longest_example)
    fixed_checkpointing = {True: (shape.layers,), False: (0,)}.get(training.gradient_checkpointing)
    candidates = plan_settings(
        shape, base, max_length=length, gpu_memory_bytes=gpu_memory_bytes,
        micro_batches=None if training.batch_size == "auto" else (training.batch_size,),
        checkpointed_layers=fixed_checkpointing, quantizations=quantizations,
        # training.distributed fsdp: the weights and LoRA states of each GPU are its share
        estimate=partial(sharded_estimate, world_size=sharded_over) if sharded_over > 1 else None,
        tiling=single_process and cuda,
        bin_positions=shared_bin_positions(config, sharing),
        micro_batch_layout=pair_micro_batches(config, pairs),
        data_rows=data_rows,
    )
    if not cuda:
        candidates = [_as_cpu_pieces(candidate, shape, config.model.max_length, length) for candidate in candidates]
    chosen = candidates[0]
    if not chosen.fits:
        smallest = min(candidates, key=lambda c: c.estimate.peak_on_gpu())
        raise ConfigError("memory plan", [
            f"{model_config.get('model_type', 'this model')} at model.max_length={config.model.max_length} needs at least "
            f"{smallest.estimate.peak_on_gpu() / GIB:.1f} GiB of GPU memory (micro-batch {smallest.micro_batch}, "
            f"{smallest.settings.quantization}, checkpointing "
            f"{checkpointing_text(smallest.settings.checkpointed_layers, shape.layers, smallest.settings.offload_activations, smallest.settings.tiled_mlp)}"
            f"), but {gpu_memory_bytes / GIB:.1f} GiB is available.",
            refusal_advice(config),
        ])
    if cuda and single_process and sharded_over == 1 and memory_to_spare(chosen, candidates):
        chosen = keep_dequantized_layers(shape, chosen, gpu_memory_bytes)  # spent last (plan/dequantized.py)
    settings = chosen.settings
    return TrainingPlan(settings.quantization, chosen.micro_batch, settings.checkpointed_layers,
                        settings.offload_activations, chosen, candidates, gpu_memory_bytes, shape.layers, settings.tiled_mlp)


def refusal_advice(config: RunConfig) -> str:
    """What the user can change when nothing fits: only the levers the config has not already pulled (advising
    nf4 to a run that already tried nf4 sends the user round in a circle).

    >>> from lorakit.config import RunConfig
    >>> nf4 = RunConfig.model_validate({"model": {"quantization": "nf4"}, "data": {"train_file": "x.jsonl"},
    ...                                 "training": {"batch_size": "auto", "gradient_checkpointing": "auto"}})
    >>> refusal_advice(nf4)
    'Lower model.max_length, or pick a smaller model or a GPU with more memory.'
    >>> fixed = RunConfig.model_validate({"model": {"quantization": "none"}, "data": {"train_file": "x.jsonl"},
    ...                                   "training": {"batch_size": 4, "gradient_checkpointing": False}})
    >>> refusal_advice(fixed)
    'Lower model.max_length, use model.quantization: nf4 (or auto), set training.batch_size: auto, set training.gradient_checkpointing: auto, or pick a smaller model or a GPU with more memory.'
    """
    levers = ["Lower model.max_length"]
    if config.model.quantization == "none":  # auto already tried nf4 where bitsandbytes is there
        levers.append("use model.quantization: nf4 (or auto)")
    if config.training.batch_size != "auto" and config.training.batch_size > 1:
        levers.append("set training.batch_size: auto")
    if config.training.gradient_checkpointing is False:
        levers.append("set training.gradient_checkpointing: auto")
    return ", ".join(levers) + ", or pick a smaller model or a GPU with more memory."


def _as_cpu_pieces(candidate: Candidate, shape: ModelShape, max_length: int, length: int) -> Candidate:
    """The candidate's estimate for the pieces a CPU run cuts each micro-batch into."""
    piece = cpu_micro_batch_size(candidate.micro_batch, max_length) or candidate.micro_batch
    settings = replace(candidate.settings, tokens_per_micro_batch=piece * length)
    return replace(candidate, settings=settings, estimate=estimate_peak_memory(shape, settings))


@dataclass(frozen=True)
class ResolvedSettings:
    """`config` with no `auto` left in training.batch_size, training.gradient_checkpointing and
    model.quantization, plus what the config has no field for."""

    config: RunConfig
    checkpointed_layers: int  # the first n decoder layers; 0 = none
    offload_activations: bool
    plan: TrainingPlan | None
    tiled_mlp: bool = False
    dequantized_layers: int = 0  # nf4: the first n decoder layers' weights kept dequantized (plan/dequantized.py)


# What NCCL holds on each GPU of a several-GPU run, outside PyTorch's allocator: on 2 H200s nvidia-smi read
# 9.1 GiB on a GPU whose allocator was capped at 7.25 GiB, 1.8 GiB outside it, of which ~0.75 is the CUDA
# context the planner already counts (bench/results/multi_gpu/fsdp).
NCCL_BYTES = int(1.1 * GIB)


def device_memory_bytes(cuda: bool) -> int:
    """Total memory of the GPU in use, or of the machine (CPU training)."""
    import os

    import torch

    if cuda:
        device = torch.cuda.current_device()
        total = torch.cuda.get_device_properties(device).total_memory
        fraction = torch.cuda.get_per_process_memory_fraction(device) if hasattr(
            torch.cuda, "get_per_process_memory_fraction") else 1.0
        if fraction < 1.0:  # PyTorch's allocator is capped (a shared GPU, or an emulated smaller card): plan for the
            return int(total * fraction) + CUDA_CONTEXT_BYTES  # card whose memory minus the context is the cap
        return total
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def resolve_auto_settings(config: RunConfig, model_config: dict, *, cuda: bool, dtype_bytes: int,
                          nf4_available: bool, memory_bytes: int | None = None,
                          longest_example: int | None = None, world_size: int = 1,
                          pairs: PairLayout | None = None, sharing: PrefixSharing | None = None,
                          data_rows: int | None = None) -> ResolvedSettings:
    """Run the planner when anything is `auto` (against `memory_bytes`, default the GPU's memory, or RAM on
    CPU), per GPU for the training.distributed strategy of `world_size` processes (which `auto` resolves to);
    fixed settings stay as they are. A max_length the model cannot take is refused first."""
    check_max_length(config, model_config)
    config, memory_bytes, sharded_over = _per_process(config, model_config, memory_bytes or device_memory_bytes(cuda),
                                                      world_size, cuda=cuda, dtype_bytes=dtype_bytes,
                                                      nf4_available=nf4_available and cuda, longest_example=longest_example,
                                                      pairs=pairs, sharing=sharing, data_rows=data_rows)
    training = config.training
    if "auto" not in (training.batch_size, training.gradient_checkpointing, config.model.quantization):
        shape = ModelShape.from_config(model_config)
        layers = shape.layers if training.gradient_checkpointing else 0
        if not (cuda and world_size == 1 and config.model.quantization == "nf4"):
            return ResolvedSettings(config, layers, False, None)
        # fixed settings as the plan's only candidate: what they leave may keep weights dequantized (a plan only then)
        fixed = fixed_settings_candidate(config, shape, memory_bytes, dtype_bytes=dtype_bytes,
                                         longest_example=longest_example, pairs=pairs, sharing=sharing)
        chosen = keep_dequantized_layers(shape, fixed, int(memory_bytes * FIXED_SETTINGS_SHARE))
        kept = chosen.settings.dequantized_layers
        plan = TrainingPlan("nf4", chosen.micro_batch, layers, False, chosen, [fixed], memory_bytes, shape.layers)
        return ResolvedSettings(config, layers, False, plan if kept else None, dequantized_layers=kept)
    plan = plan_training(config, model_config, memory_bytes, dtype_bytes=dtype_bytes,
                         nf4_available=nf4_available and cuda, cuda=cuda, longest_example=longest_example,
                         sharded_over=sharded_over, single_process=world_size == 1, pairs=pairs, sharing=sharing,
                         data_rows=data_rows)
    resolved = config.model_copy(update={
        "training": training.model_copy(update={"batch_size": plan.micro_batch,
                                                "gradient_checkpointing": plan.checkpointed_layers > 0}),
        "model": config.model.model_copy(update={"quantization": plan.quantization}),
    })
    return ResolvedSettings(resolved, plan.checkpointed_layers, plan.offload_activations, plan, plan.tiled_mlp,
                            plan.dequantized_layers)


def _per_process(config: RunConfig, model_config: dict, memory_bytes: int, world_size: int, *, cuda: bool,
                 **plan_args) -> tuple[RunConfig, int, int]:
    """What one of `world_size` processes plans with: the config with training.distributed resolved, the memory
    left to PyTorch (NCCL's buffers live outside its allocator, next to the CUDA context), and how many processes
    share the weights (fsdp) or 1 (ddp). One place for `lorakit train` and `lorakit plan --gpus`."""
    if cuda and world_size > 1:
        memory_bytes -= NCCL_BYTES
    config = _resolve_distributed(config, model_config, world_size, memory_bytes, cuda=cuda, **plan_args)
    return config, memory_bytes, world_size if config.training.distributed == "fsdp" else 1


def _resolve_distributed(config: RunConfig, model_config: dict, world_size: int, memory_bytes: int, *, cuda: bool,
                         **plan_args) -> RunConfig:
    """training.distributed `auto` -> ddp or fsdp (plan/sharded.py); with several processes under fsdp, an
    `auto` quantization is none (nf4 cannot be sharded)."""
    def one_gpu_fits() -> bool:
        try:
            plan_training(config, model_config, memory_bytes, cuda=cuda, single_process=world_size == 1, **plan_args)
        except ConfigError:
            return False
        return True

    distributed = choose_distributed(config.training.distributed, config.model.quantization, world_size, cuda=cuda,
                                     one_gpu_fits=one_gpu_fits)
    if world_size == 1 or (distributed == config.training.distributed and config.model.quantization != "auto"):
        return config  # one process trains unsharded whatever the setting says
    update = {"training": config.training.model_copy(update={"distributed": distributed})}
    if distributed == "fsdp" and config.model.quantization == "auto":
        update["model"] = config.model.model_copy(update={"quantization": "none"})
    return config.model_copy(update=update)


def plan_run(config: RunConfig, gpu_memory_bytes: int | None, world_size: int = 1, *, pairs: PairLayout | None = None,
             longest_example: int | None = None, data_rows: int | None = None) -> tuple[TrainingPlan, RunConfig, dict]:
    """`lorakit plan`: the plan per GPU for `gpu_memory_bytes` (default: this machine's GPU) and `world_size` GPUs,
    the config with training.distributed resolved as `lorakit train` would, and the model's config.json. `pairs`,
    `longest_example` and `data_rows`: a preference run's data as `lorakit train` plans on it
    (training/planned_pairs.py)."""
    if gpu_memory_bytes is None:
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("--gpu-memory", ["no CUDA GPU on this machine; say which GPU to plan for, e.g. --gpu-memory 8GB"])
        gpu_memory_bytes = device_memory_bytes(cuda=True)
    model_config = read_model_config_json(config.model)
    check_max_length(config, model_config)
    dtype_bytes = 4 if config.training.precision == "fp32" else 2
    config, memory_bytes, sharded_over = _per_process(config, model_config, gpu_memory_bytes, world_size, cuda=True,
                                                      dtype_bytes=dtype_bytes, nf4_available=True, pairs=pairs,
                                                      longest_example=longest_example, data_rows=data_rows)
    plan = plan_training(config, model_config, memory_bytes, dtype_bytes=dtype_bytes, nf4_available=True,
                         sharded_over=sharded_over, single_process=world_size == 1, pairs=pairs,
                         longest_example=longest_example, data_rows=data_rows)
    return plan, config, model_config
