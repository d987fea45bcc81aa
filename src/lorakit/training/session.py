"""The training session: tokenizer, data, base model and LoRA, loaded once for a run (the setup half of the
recipe; training/trainer.py runs the steps on it).

The order puts cheap failures (data) before slow ones (weights), and the memory planner resolves `auto`
settings from config.json alone before any weight is read.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from lorakit.config import RunConfig
from lorakit.data.chat_template import chat_template_identity
from lorakit.data.preference_batch import PairLayout
from lorakit.errors import TrainingError
from lorakit.model.adapters import (
    name_adapter_base,
    public_model_name,
    resolve_target_modules,
    trainable_parameter_count,
    variant_identity,
)
from lorakit.model.attention import uses_varlen_attention
from lorakit.model.kernels import LOSS_POSITIONS, lm_head_is_fusable, loss_positions, unwrap_peft_model
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
from lorakit.model.trainable import make_trainable
from lorakit.plan.run_plan import resolve_auto_settings
from lorakit.runtime.device import compute_dtype, pick_device
from lorakit.runtime.distributed import Ranks, current_ranks
from lorakit.runtime.logging import get_logger
from lorakit.training.batches import collate_group, run_pair_layout
from lorakit.training.data_parallel import agree_on_plan
from lorakit.training.dataset import PreparedData, prepare_data
from lorakit.training.metrics import ProgressReporter
from lorakit.training.preference_setup import prepare_for_method
from lorakit.training.sharding import ShardedLoss, shard_model

__all__ = ["TrainingSession", "BatchesAhead", "build_session", "collate_for_step", "takes_shared_prefixes",
           "SHARED_PACKING_MESSAGE"]

log = get_logger("training.session")
# What a packed SFT run says when its rows share prefixes (bench/peer_speed.py reads it to count the positions).
SHARED_PACKING_MESSAGE = "packing: each packed row computes its examples' shared prefix once"


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
    ahead: BatchesAhead = field(default_factory=lambda: BatchesAhead())  # the next step's batches, made early
    epoch_groups: dict[int, list[list[int]]] = field(default_factory=dict)  # an epoch's micro-batches, by epoch
    shared_prefix: bool = False  # pairs / packed examples collated with their common prefix once (takes_shared_prefixes)
    pair_layout: PairLayout | None = None  # preference pairs as the planner counts them (an OOM re-plan too)

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

    def make(self, session: TrainingSession, groups: list[list[int]]) -> None:
        self._ready = {tuple(group): collate_for_step(session, group) for group in groups}

    def holds(self, group: list[int]) -> bool:
        """Whether the batch of `group` is made and not yet taken."""
        return tuple(group) in self._ready

    def __len__(self) -> int:
        return len(self._ready)

    def take(self, session: TrainingSession, group: list[int]) -> dict:
        """The batch made ahead for `group`, or a fresh one (first step, or a step an out-of-memory retry re-cut)."""
        ready = self._ready.pop(tuple(group), None)
        return ready if ready is not None else collate_for_step(session, group)


def collate_for_step(session: TrainingSession, group: list[int]) -> dict:
    """One micro-batch on the CPU, with the positions the loss reads (so finding them costs no GPU sync)."""
    batch = collate_group(session.data.splits.train, group, session.tokenizer.pad_token_id,
                          packed=session.config.training.packing, shared_prefix=session.shared_prefix)
    if "labels" in batch:  # a shared-prefix batch carries its predicting positions instead
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
    pairs = run_pair_layout(data.pair_layout, config)  # preference pairs, with the run's data order
    resolved = resolve_auto_settings(config, read_model_config(source), cuda=device.type == "cuda",
                                     dtype_bytes=torch.finfo(dtype).bits // 8, nf4_available=bitsandbytes_available(),
                                     longest_example=data.longest_example, world_size=ranks.world_size,
                                     pairs=pairs,
                                     sharing=data.prefix_sharing if config.training.shares_prefixes else None,
                                     data_rows=data.rows_to_fill(packing=config.training.packing,
                                                                 max_length=config.model.max_length))
    config = resolved.config
    agree_on_plan(ranks, config)
    sharded = config.training.distributed == "fsdp" and ranks.distributed
    if resolved.plan is not None:
        reporter.message(f"memory plan: {config.model.quantization}, micro-batch {config.training.batch_size}, "
                         f"checkpointing {resolved.plan.checkpointing_text}, "
                         + (f"{resolved.plan.dequantized_text}, " if resolved.plan.dequantized_text else "")
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
                           sharded=sharded, tiled_mlp=resolved.tiled_mlp, dequantized_layers=resolved.dequantized_layers)
    name_adapter_base(model, public_model_name(source))  # adapter_config.json names no local path
    # before fully_shard: a sharded LM head's weight is a DTensor, which the fused-head check reads as quantized
    shared_prefix = takes_shared_prefixes(config, model)
    # starting adapter, DPO reference, dropout; the identity records whether rows share prefixes
    method_identity = prepare_for_method(model, config, targets, shares_prefixes=shared_prefix)
    # Every module in training mode (from_pretrained leaves the base model's in eval mode under a training-mode
    # peft wrapper): a step then switches modes only after an evaluation flipped the root (Trainer.step).
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
    if shared_prefix and config.training.method == "sft":
        reporter.message(f"{SHARED_PACKING_MESSAGE} (training.shared_prefix)")
    elif shared_prefix:
        computed, tokens = sum(pairs.positions), sum(pairs.keys)  # the planner's per-pair counts, not counted again
        reporter.message(f"preference pairs: each pair's common prompt computed once, no padding ({computed:,} positions "
                         f"for {tokens:,} tokens of chosen and rejected sequences, {tokens / computed:.2f}x fewer)")
    return TrainingSession(config, source, tokenizer, model, data, device, dtype, quantized, identity,
                           resolved.offload_activations, ranks, root, shared_prefix=shared_prefix, pair_layout=pairs)


def takes_shared_prefixes(config: RunConfig, model) -> bool:
    """training.shared_prefix where the run and the model can take it: no NEFTune (config.shares_prefixes),
    lorakit_varlen attention and, for packed SFT, an LM head that the fused loss can run on the predicting positions
    alone (model/kernels.py); else one WARNING and the padded (preference) or whole-example packed (SFT) rows."""
    training = config.training
    if training.shared_prefix and training.neftune_noise_alpha is not None and (training.method != "sft" or training.packing):
        log.warning("training.neftune_noise_alpha scales its noise by the row's length, which sharing would change: "
                    "training.shared_prefix has no effect")
    if not training.shares_prefixes:
        return False
    if not uses_varlen_attention(model):
        log.warning("%s cannot take lorakit_varlen attention: training.shared_prefix has no effect",
                    type(unwrap_peft_model(model)).__name__)
        return False
    if training.method == "sft" and not lm_head_is_fusable(unwrap_peft_model(model)):
        log.warning("%s's LM head is quantized or scales its logits: packed rows keep every example whole "
                    "(training.shared_prefix has no effect)", type(unwrap_peft_model(model)).__name__)
        return False
    return True

