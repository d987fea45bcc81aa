"""Fused kernels where they help, plain PyTorch everywhere else, and the training loss without full logits.

- On CUDA with liger-kernel installed: Triton RMSNorm, RoPE and SwiGLU replace the model's own modules
  (`apply_fused_kernels`), and the loss uses liger's fused linear cross-entropy.
- Elsewhere (CPU, no liger): the model's own modules, and a chunked linear cross-entropy in plain PyTorch.

Either way `causal_lm_loss` never materialises the [tokens, vocab] logits: Phi-4-mini's 200,064-wide vocabulary
makes them 0.8 GB per 2,048 tokens in bf16, and ~3x that once upcast and differentiated. It also runs the
LM head only on positions that have a target (prompt tokens have none), which is work the loss never needed.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import warnings

import torch
import torch.nn.functional as F

from lorakit.data.masking import IGNORE_INDEX
from lorakit.data.shared_prefix import MODEL_INPUTS
from lorakit.runtime.logging import get_logger

__all__ = [
    "liger_available",
    "quiet_liger",
    "unwrap_peft_model",
    "apply_fused_kernels",
    "lm_head_is_fusable",
    "chunked_linear_cross_entropy",
    "linear_cross_entropy_sum",
    "causal_lm_loss",
    "shared_prefix_loss",
    "flat_row_outputs",
    "loss_positions",
    "LOSS_POSITIONS",
]

log = get_logger("model.kernels")

# Transient logits per chunk of the plain-PyTorch loss: ~256 MiB of fp32 at Phi-4-mini's vocabulary.
_CHUNK_LOGIT_ELEMENTS = 64 * 1024 * 1024
# Heads whose logits are rescaled or soft-capped are left to the model's own forward.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


@functools.cache
def liger_available() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


@functools.cache
def quiet_liger() -> None:
    """Silence what liger-kernel says on import that a user cannot act on: one WARNING per optional backend it
    could not import (CuTe DSL, native kernels) and a warning per kernel that falls back to its Triton
    version. The Triton kernels lorakit uses are the ones that run; real errors still raise."""
    logging.getLogger("liger_kernel.backends").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r"Liger .*implementation not usable")
    warnings.filterwarnings("ignore", message=r"liger-cute-kernels is not installed")


def unwrap_peft_model(model):
    """The transformers model inside a peft wrapper (LoRA layers are injected into it in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def apply_fused_kernels(model, device: torch.device) -> list[str]:
    """Patch RMSNorm, RoPE and SwiGLU with liger's Triton kernels; returns what was patched ([] = plain PyTorch).

    Call on the base model before LoRA is attached. liger patches RoPE at module level, so every model of
    the same architecture built later in this process uses it too.
    """
    if device.type != "cuda" or not liger_available():
        if device.type == "cuda":
            log.warning("liger-kernel is not installed: plain PyTorch norms, RoPE and SwiGLU (pip install 'lorakit[gpu]')")
        return []
    quiet_liger()
    from liger_kernel.transformers import _apply_liger_kernel_to_instance
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    base = unwrap_peft_model(model)
    if base.config.model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        log.warning("liger-kernel has no kernels for %s; using plain PyTorch modules", base.config.model_type)
        return []
    # The loss is fused by causal_lm_loss itself, for every architecture, so liger's forward patch stays off.
    _apply_liger_kernel_to_instance(
        model=base, rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False
    )
    return ["rms_norm", "rope", "swiglu"]


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """sum_i CE(hidden_i @ weight.T, target_i), computed chunk by chunk; gradients are formed in the forward
    pass (as liger does) so no chunk's logits outlive their chunk."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_tokens: int):
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        ctx.weight_dtype = weight.dtype
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_tokens):
            chunk, target = hidden[start : start + chunk_tokens], targets[start : start + chunk_tokens]
            logits = (chunk @ weight.t()).float()
            log_norm = torch.logsumexp(logits, dim=-1)
            total += (log_norm - logits.gather(1, target[:, None]).squeeze(1)).sum()
            if need_hidden or need_weight:
                probabilities = logits.sub_(log_norm[:, None]).exp_()  # softmax, in place
                probabilities[torch.arange(target.numel(), device=target.device), target] -= 1.0
                if need_hidden:
                    grad_hidden[start : start + chunk_tokens] = (probabilities.to(weight.dtype) @ weight).to(hidden.dtype)
                if need_weight:
                    grad_weight += probabilities.t() @ chunk.float()
        ctx.save_for_backward(grad_hidden, grad_weight)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_hidden, grad_weight = ctx.saved_tensors
        grad_hidden = grad_hidden * grad_total if grad_hidden is not None else None
        grad_weight = (grad_weight * grad_total).to(ctx.weight_dtype) if grad_weight is not None else None
        return grad_hidden, grad_weight, None, None


def chunked_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of `hidden @ weight.T` against `targets` (no ignored entries), in plain PyTorch."""
    chunk_tokens = max(1, _CHUNK_LOGIT_ELEMENTS // weight.shape[0])
    return _ChunkedLinearCrossEntropy.apply(hidden, weight, targets, chunk_tokens)


def linear_cross_entropy_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed token cross-entropy of a linear head: liger's fused kernel on CUDA, else the chunked fallback."""
    if hidden.is_cuda and liger_available():
        quiet_liger()
        from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

        if hidden.dtype != weight.dtype:  # autocast regions hand bf16 activations to an fp32 head, or vice versa
            hidden = hidden.to(weight.dtype)
        return LigerFusedLinearCrossEntropyLoss(reduction="sum")(weight, hidden, targets)
    if torch.is_autocast_enabled(hidden.device.type):
        dtype = torch.get_autocast_dtype(hidden.device.type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
    return chunked_linear_cross_entropy(hidden, weight, targets)


def lm_head_is_fusable(base) -> bool:
    """Whether the fused linear cross-entropy can stand in for this model's LM head: a plain, unquantized,
    bias-free Linear whose logits the model neither rescales nor soft-caps (else the model's own forward runs)."""
    head = base.get_output_embeddings()
    config = base.config.to_dict()
    return (
        isinstance(head, torch.nn.Linear)
        and head.bias is None
        and type(head.weight) is torch.nn.Parameter  # not a quantized parameter
        and not any(config.get(name) not in (None, 1, 1.0) for name in _LOGIT_TRANSFORMS)
    )


LOSS_POSITIONS = "loss_positions"  # optional batch entry: loss_positions(labels), computed where labels are on the CPU


def loss_positions(labels: torch.Tensor) -> torch.Tensor:
    """Flat indices of the positions that predict a label (position t predicts label t+1).

    Computed from the batch's CPU labels before they move to the GPU, `nonzero` costs no synchronisation: on the
    GPU it stops the host until the whole forward pass has run.

    >>> loss_positions(torch.tensor([[-100, 5, 6], [-100, -100, 7]])).tolist()
    [0, 1, 4]
    """
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX).reshape(-1)
    return (targets != IGNORE_INDEX).nonzero().squeeze(1)


def causal_lm_loss(model, batch: dict, num_items_in_batch: int | None = None) -> torch.Tensor:
    """Next-token loss over the batch's labelled positions, summed and divided by `num_items_in_batch`
    (the step's target-token count, for token-weighted accumulation; default: this batch's count).

    Same value as `model(**batch).loss`; packed batches (position_ids, cu_seq_lens) pass straight through.
    `batch[LOSS_POSITIONS]`, when present, is `loss_positions(labels)` computed ahead (no device sync here).
    A shared-prefix batch (data/shared_packing.py: it has `kv_index`) has no labels row: its targets are explicit
    (predicting flat position, label) pairs, see `shared_prefix_loss`.
    """
    base = unwrap_peft_model(model)
    if "kv_index" in batch:
        return shared_prefix_loss(model, batch, num_items_in_batch)
    labels = batch["labels"]
    keep = batch.get(LOSS_POSITIONS)
    inputs = {key: value for key, value in batch.items() if key not in ("labels", LOSS_POSITIONS)}
    if not lm_head_is_fusable(base):
        return model(**inputs, labels=labels, use_cache=False, num_items_in_batch=num_items_in_batch).loss
    hidden = base.get_decoder()(**inputs, use_cache=False).last_hidden_state
    # Position t predicts label t+1; the last position of each row predicts nothing.
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX).reshape(-1)
    if keep is None:
        keep = loss_positions(labels)
    keep = keep.to(targets.device)
    if keep.numel() == 0:
        return hidden.sum() * 0.0  # nothing to learn here, but keep the graph for backward()
    total = linear_cross_entropy_sum(hidden.reshape(-1, hidden.shape[-1]).index_select(0, keep),
                                     base.get_output_embeddings().weight, targets.index_select(0, keep))
    return total / (num_items_in_batch if num_items_in_batch is not None else keep.numel())


def flat_row_outputs(model, batch: dict) -> tuple[torch.Tensor, bool]:
    """One forward of a shared-prefix batch's flat row (data/shared_prefix.py), for the SFT loss and the preference
    log-probs alike: its final hidden states [T, hidden] where the fused head can run on the predicting positions
    alone, else the model's own full logits [T, vocab] (a head that is quantized or scales its logits); and
    whether they are logits."""
    base = unwrap_peft_model(model)
    inputs = {key: batch[key] for key in MODEL_INPUTS}
    if lm_head_is_fusable(base):
        return base.get_decoder()(**inputs, use_cache=False).last_hidden_state[0], False
    return model(**inputs, use_cache=False).logits[0], True


def shared_prefix_loss(model, batch: dict, num_items_in_batch: int | None = None) -> torch.Tensor:
    """Next-token loss of a shared-prefix batch (data/shared_prefix.py): the hidden state at flat position
    `predicting_positions[i]` predicts `predicted_labels[i]`. A position inside a shared prefix predicts the first
    answer token of every example that shares it up to there, so positions may repeat (their gradients add up)."""
    outputs, are_logits = flat_row_outputs(model, batch)
    positions, targets = batch["predicting_positions"], batch["predicted_labels"]
    divisor = num_items_in_batch if num_items_in_batch is not None else positions.numel()
    if are_logits:  # full logits of the flat row, as the model's own loss would make them
        total = F.cross_entropy(outputs.index_select(0, positions).float(), targets, reduction="sum")
        return total / max(divisor, 1) + outputs.sum() * 0.0
    if positions.numel() == 0:
        return outputs.sum() * 0.0  # nothing to learn here, but keep the graph for backward()
    weight = unwrap_peft_model(model).get_output_embeddings().weight
    return linear_cross_entropy_sum(outputs.index_select(0, positions), weight, targets) / divisor
