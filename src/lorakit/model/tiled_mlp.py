"""The MLP of each decoder layer run on chunks of the sequence, so its [tokens, intermediate] tensors never exist
whole: what lets one 32k-token example train on an 8 GB card (issue 23).

With every layer checkpointed and the layer inputs offloaded to the CPU, what is left on the GPU during backward
is one layer's recompute. At 32,768 tokens of a Phi-4-mini-shaped layer (intermediate 8,192) its MLP alone holds
gate-up's output [tokens, 16,384] (1 GiB in bf16), the activated [tokens, 8,192] and the LoRA dropout copies
of both inputs, and its backward the gradient of gate-up's output (1 GiB more): more than the card has left after
the weights. `TiledMLP` keeps only the MLP's input for backward; its forward runs the MLP chunk by chunk without
a graph, its backward runs each chunk again with a graph and back-propagates through it at once, so only one
chunk's intermediates ever exist. The idea is Arctic Long Sequence Training's TiledMLP (arXiv:2506.13996) and
Unsloth's; this is lorakit's own code, for the MLP modules of transformers' decoder layers.

The numbers: each output row depends only on its input row, so the forward output is that of the whole MLP;
the LoRA weights' gradients are sums over tokens, added chunk by chunk, so they differ from the untiled ones
only in the order of that sum (tests/model/test_tiled_mlp.py states the tolerance). Dropout masks are drawn
chunk by chunk from the same random stream in the forward and, with that stream's state restored, again in the
backward; the global stream then continues where the forward left it, so resume stays exact.
"""

from __future__ import annotations

import functools
import types
from dataclasses import dataclass

import torch

from lorakit.model.checkpointing import decoder_layers
from lorakit.model.kernels import unwrap_peft_model

__all__ = ["MLP_CHUNK_BYTES", "mlp_chunk_tokens", "TiledMLP", "use_tiled_mlp"]

# One chunk's gate-up output: 64 MiB, 2,048 tokens of Phi-4-mini in bf16. Smaller chunks cost more kernel launches
# (and nf4 dequantizes each weight once per chunk and pass); bigger ones more memory (plan/memory.py counts it).
MLP_CHUNK_BYTES = 64 * 2**20


def mlp_chunk_tokens(intermediate: int, dtype_bytes: int) -> int:
    """Tokens per MLP chunk: the gate-up output of one chunk fills MLP_CHUNK_BYTES.

    >>> mlp_chunk_tokens(8192, 2)
    2048
    """
    return max(256, MLP_CHUNK_BYTES // (2 * intermediate * dtype_bytes))


@dataclass(frozen=True)
class _Replay:
    """What the backward pass needs to run a chunk exactly as the forward pass did: the random stream's state
    (dropout masks) and autocast's (the backward pass runs outside the forward's autocast region)."""

    cpu_rng: torch.Tensor
    device_rng: torch.Tensor | None
    device: torch.device
    autocast: bool
    autocast_dtype: torch.dtype

    @classmethod
    def capture(cls, device: torch.device) -> _Replay:
        device_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        return cls(torch.get_rng_state(), device_rng, device, torch.is_autocast_enabled(device.type),
                   torch.get_autocast_dtype(device.type))

    def restore_rng(self) -> None:
        torch.set_rng_state(self.cpu_rng)
        if self.device_rng is not None:
            torch.cuda.set_rng_state(self.device_rng, self.device)


def _chunks(rows: int, chunk_tokens: int) -> list[slice]:
    return [slice(start, min(start + chunk_tokens, rows)) for start in range(0, rows, chunk_tokens)]


class TiledMLP(torch.autograd.Function):
    """mlp(x) computed on `chunk_tokens` rows at a time; keeps only x for backward. `params`: the MLP's trainable
    parameters, passed so that backward runs even when x takes no gradient; their gradients are accumulated by
    the chunks' own backward passes (returned as None here)."""

    @staticmethod
    def forward(ctx, x, mlp_forward, chunk_tokens: int, *params):
        ctx.mlp_forward, ctx.chunk_tokens = mlp_forward, chunk_tokens
        ctx.replay = _Replay.capture(x.device)
        ctx.save_for_backward(x)
        rows = x.reshape(-1, x.shape[-1])
        out = None
        for part in _chunks(rows.shape[0], chunk_tokens):
            piece = mlp_forward(rows[part].unsqueeze(0)).squeeze(0)
            if out is None:
                out = piece.new_empty(rows.shape[0], piece.shape[-1])
            out[part] = piece
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        replay = ctx.replay
        rows, grad_rows = x.reshape(-1, x.shape[-1]), grad_out.reshape(-1, grad_out.shape[-1])
        need_x = ctx.needs_input_grad[0]
        grad_x = torch.empty_like(rows) if need_x else None
        devices = [replay.device] if replay.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.enable_grad(), torch.autocast(
                replay.device.type, dtype=replay.autocast_dtype, enabled=replay.autocast):
            replay.restore_rng()
            for part in _chunks(rows.shape[0], ctx.chunk_tokens):
                piece = rows[part].detach().requires_grad_(need_x)
                out = ctx.mlp_forward(piece.unsqueeze(0)).squeeze(0)
                torch.autograd.backward(out, grad_rows[part].to(out.dtype))
                if need_x:
                    grad_x[part] = piece.grad
        grad_x = grad_x.view(x.shape) if need_x else None
        return (grad_x, None, None) + (None,) * (len(ctx.needs_input_grad) - 3)


def _tiled_forward(mlp: torch.nn.Module, chunk_tokens: int | None, intermediate: int, x: torch.Tensor):
    untiled = mlp.lorakit_untiled_forward or types.MethodType(type(mlp).forward, mlp)
    chunk = chunk_tokens or mlp_chunk_tokens(intermediate, x.element_size())
    params = [p for p in mlp.parameters() if p.requires_grad]
    return TiledMLP.apply(x, untiled, chunk, *params)


def use_tiled_mlp(model, tiled: bool, chunk_tokens: int | None = None) -> int:
    """Run every decoder layer's MLP (`layer.mlp`) in sequence chunks (`tiled`), or as the model's own again;
    returns how many MLPs were switched. `chunk_tokens`: default `mlp_chunk_tokens` of the model's intermediate
    size and the activations' dtype. Call after anything else that replaces an MLP's forward (fused projections):
    the tiled forward runs whatever forward the MLP had when first tiled."""
    base = unwrap_peft_model(model)
    intermediate = getattr(base.config, "intermediate_size", None) or 4 * base.config.hidden_size
    switched = 0
    for layer in decoder_layers(model):
        mlp = getattr(layer, "mlp", None)
        if mlp is None:
            continue
        if "lorakit_untiled_forward" not in vars(mlp):
            mlp.lorakit_untiled_forward = vars(mlp).get("forward")  # None: the class's own forward
        if tiled:
            mlp.forward = functools.partial(_tiled_forward, mlp, chunk_tokens, intermediate)
        elif mlp.lorakit_untiled_forward is None:
            vars(mlp).pop("forward", None)
        else:
            mlp.forward = mlp.lorakit_untiled_forward
        switched += 1
    return switched
