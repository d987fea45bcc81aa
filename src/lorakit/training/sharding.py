"""FSDP2 for bf16 LoRA of a model that does not fit one GPU: PyTorch's `fully_shard` splits every decoder
layer's frozen weights (and its LoRA weights, gradients and AdamW moments) over the processes, and gathers a
layer's full weights just before it runs (the next layer's gather overlaps the current layer's compute).

Three lorakit specifics shape this module:
- The loss (model/kernels.py) calls the decoder directly and multiplies by the head's weight, so the root of the
  sharding is `ShardedLoss`, a module whose forward *is* that loss: its hooks gather the embeddings, final norm
  and (tied) head around it. Those root weights stay whole from forward to backward (FSDP2's default for the
  root), which the memory plan counts (plan/sharded.py).
- Gradients are summed over processes, not averaged, because every micro-batch's loss is already divided by
  the step's supervised tokens over all processes (training/data_parallel.py); FSDP2's divide factor is 1.
- Checkpoints keep the one-process format: the full LoRA weights and optimizer state are gathered to rank 0
  (torch.distributed.checkpoint's get_model_state_dict / get_optimizer_state_dict, full_state_dict on the CPU)
  and written by run/checkpoints.py as always; resume hands those full states to every rank, which keeps
  its shard (set_model_state_dict / set_optimizer_state_dict). So a run resumes with any number of processes
  and across ddp <-> fsdp.

Every forward pass gathers weights in a collective, so under FSDP every rank must run the same number of them:
a rank with fewer micro-batches in a step runs an extra pass whose loss is multiplied by 0 (runtime/distributed.Ranks.share_in_lockstep).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from lorakit.model.checkpointing import decoder_layers
from lorakit.model.kernels import causal_lm_loss

__all__ = ["ShardedLoss", "shard_model", "is_sharded", "TrainableState", "gather_weights", "gather_trainable_state",
           "load_trainable_state"]

# Weights and activations already run in bf16 (stored so, and under autocast); the fp32 LoRA weights are cast by
# autocast exactly as in the one-process run. A param_dtype would gather them in bf16 and change the results to
# save megabytes, so only the gradient reduction is pinned to fp32 (LoRA gradients are fp32 already).
_MIXED_PRECISION = MixedPrecisionPolicy(param_dtype=None, reduce_dtype=torch.float32)
_FULL_ON_RANK_0 = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
_FULL_ON_EVERY_RANK = StateDictOptions(full_state_dict=True, strict=False)


class ShardedLoss(torch.nn.Module):
    """The root of the sharded model: forward(batch, num_items_in_batch) is lorakit's causal-LM loss."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict, num_items_in_batch: int | None = None) -> torch.Tensor:
        return causal_lm_loss(self.model, batch, num_items_in_batch=num_items_in_batch)


def shard_model(model: torch.nn.Module) -> ShardedLoss:
    """fully_shard each decoder layer, then the root (embeddings, final norm, head); `model`'s parameters become
    DTensor shards in place. Build the optimizer after this, over the sharded parameters."""
    for layer in decoder_layers(model):
        fully_shard(layer, mp_policy=_MIXED_PRECISION)
    root = fully_shard(ShardedLoss(model), mp_policy=_MIXED_PRECISION)
    for module in root.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)  # summed, not averaged (see the module docstring)
            module.set_force_sum_reduction_for_comms(True)  # a plain SUM: gloo has no pre-multiplied sum
    return root


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether `model`'s trainable parameters are FSDP2 shards (DTensors)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters() if p.requires_grad)


@dataclass
class TrainableState:
    """What a checkpoint saves of the model and optimizer, full and on the CPU: `weights` keyed by the model's
    parameter names (peft's get_peft_model_state_dict takes it as is), `optimizer` in torch's one-process format
    (parameters numbered in optimizer order). Under FSDP only rank 0 holds it (the others get empty dicts)."""

    weights: dict[str, torch.Tensor]
    optimizer: dict


def gather_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full trainable (LoRA) weights of an FSDP-sharded model by parameter name; a collective whose result
    only rank 0 holds (the others get an empty dict)."""
    return get_model_state_dict(model, options=_FULL_ON_RANK_0)


def gather_trainable_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> TrainableState:
    """The full LoRA weights and optimizer state of an FSDP-sharded model; a collective (every rank calls it)."""
    weights = gather_weights(model)
    by_name = get_optimizer_state_dict(model, optimizer, options=_FULL_ON_RANK_0)
    return TrainableState(weights, _numbered_optimizer_state(by_name) if by_name else {})


def _numbered_optimizer_state(by_name: dict) -> dict:
    """torch.distributed.checkpoint's optimizer state (keyed by parameter name) -> optimizer.state_dict()'s
    (parameters numbered 0, 1, ... through the param groups in order)."""
    number, groups = {}, []
    for group in by_name["param_groups"]:
        params = []
        for name in group["params"]:
            number[name] = len(number)
            params.append(number[name])
        groups.append({**group, "params": params})
    return {"state": {number[name]: state for name, state in by_name["state"].items()}, "param_groups": groups}


def load_trainable_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                         weights: dict[str, torch.Tensor], optimizer_state: dict | None) -> None:
    """Put a checkpoint's full LoRA weights (adapter_model.safetensors' keys) and optimizer state (one-process
    format) into a sharded model: every rank passes the same full states and keeps its shard. A collective."""
    names = _parameter_names_by_adapter_key(model)
    set_model_state_dict(model, {names[key]: value for key, value in weights.items()}, options=_FULL_ON_EVERY_RANK)
    if optimizer is None or optimizer_state is None:
        return
    names = {id(p): name for name, p in model.named_parameters()}
    ordered = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    by_name = {
        "state": {ordered[number]: state for number, state in optimizer_state["state"].items()},
        "param_groups": [{**group, "params": [ordered[n] for n in group["params"]]}
                         for group in optimizer_state["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, by_name, options=_FULL_ON_EVERY_RANK)


def _parameter_names_by_adapter_key(model: torch.nn.Module) -> dict[str, str]:
    """adapter_model.safetensors key -> the model's parameter name, as peft's own renaming maps them (it drops
    the adapter name, among others): each trainable parameter is passed through it as a numbered marker."""
    from peft import get_peft_model_state_dict

    names = [name for name, p in model.named_parameters() if p.requires_grad]
    markers = {name: torch.tensor([float(number)]) for number, name in enumerate(names)}
    renamed = get_peft_model_state_dict(model, state_dict=markers, save_embedding_layers=False)
    return {key: names[int(marker.item())] for key, marker in renamed.items()}
