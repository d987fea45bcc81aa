"""Merged-model tensors -> GGUF tensors: llama.cpp's names and layouts, then 16-bit or quantized blocks.

The rules follow llama.cpp's convert_hf_to_gguf.py (read, not copied): names come from gguf-py's own tensor
map; llama's q/k projections are permuted from the Hugging Face rotary layout (first half / second half of
each head) to GGML's interleaved pairs; phi3 keeps its fused qkv_proj (attn_qkv) and gate_up_proj (ffn_up)
as they are, and a longrope model carries its rope factors as two extra float32 tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import gguf
import numpy as np
import torch

__all__ = ["ARCHITECTURES", "QUANT_TYPES", "GgufTensor", "rope_parameters", "rope_dimensions", "gguf_tensors",
           "tensor_type", "encoded_nbytes", "encode_tensor"]

ARCHITECTURES = {"llama": gguf.MODEL_ARCH.LLAMA, "phi3": gguf.MODEL_ARCH.PHI3}
Q = gguf.GGMLQuantizationType
# --quant -> (file type recorded in general.file_type, type of the 2-D weight matrices)
QUANT_TYPES = {"f16": (gguf.LlamaFileType.MOSTLY_F16, Q.F16), "q8_0": (gguf.LlamaFileType.MOSTLY_Q8_0, Q.Q8_0),
               "q4_0": (gguf.LlamaFileType.MOSTLY_Q4_0, Q.Q4_0)}
# llama-quantize keeps the embedding and output matrices at higher precision in 4-bit files: they are the
# most sensitive tensors and a small share of a multi-billion-parameter model.
_HIGH_PRECISION = {"token_embd.weight", "output.weight"}


@dataclass(frozen=True)
class GgufTensor:
    """A tensor's GGUF name and shape; `load()` makes its float32 data in GGUF layout (one tensor in memory at
    a time, so a multi-GB model is streamed to the file instead of copied whole)."""

    name: str
    shape: tuple[int, ...]
    load: Callable[[], np.ndarray]


def rope_parameters(config) -> dict:
    return dict(getattr(config, "rope_parameters", None) or {})


def rope_dimensions(config) -> int:
    """Rotary dimensions per head: head_dim, times partial_rotary_factor where the model sets one (Phi-4)."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    factor = rope_parameters(config).get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0))
    return int(head_dim * (factor or 1.0))


def _permute_for_ggml(weights: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotary layout -> GGML's: within each head, rows (i, i + d/2) become neighbours (2i, 2i + 1)."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def gguf_tensors(model) -> Iterator[GgufTensor]:
    """Every tensor of a merged llama/phi3 causal LM under its GGUF name, float32."""
    config = model.config
    name_map = gguf.get_tensor_name_map(ARCHITECTURES[config.model_type], config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd when output.weight is absent
        stem, _, suffix = hf_name.rpartition(".")
        gguf_stem = name_map.get_name(stem)
        if gguf_stem is None:
            raise ValueError(f"no GGUF name for tensor {hf_name} of a {config.model_type} model")
        heads = None
        if config.model_type == "llama" and stem.endswith("self_attn.q_proj"):
            heads = config.num_attention_heads
        elif config.model_type == "llama" and stem.endswith("self_attn.k_proj"):
            heads = config.num_key_value_heads
        yield GgufTensor(f"{gguf_stem}.{suffix}", tuple(tensor.shape), partial(_float32_data, tensor, heads))
    yield from _rope_factor_tensors(config)


def _float32_data(tensor: torch.Tensor, heads: int | None) -> np.ndarray:
    data = tensor.detach().to(torch.float32).cpu().numpy()
    return data if heads is None else _permute_for_ggml(data, heads)


def _rope_factor_tensors(config) -> Iterator[GgufTensor]:
    rope = rope_parameters(config)
    if rope.get("rope_type") not in ("longrope", "su"):
        return
    for key, tensor in (("long_factor", gguf.MODEL_TENSOR.ROPE_FACTORS_LONG),
                        ("short_factor", gguf.MODEL_TENSOR.ROPE_FACTORS_SHORT)):
        factors = np.asarray(rope[key], dtype=np.float32)
        if factors.shape != (rope_dimensions(config) // 2,):
            raise ValueError(f"rope {key} has {factors.size} values, expected {rope_dimensions(config) // 2}")
        yield GgufTensor(gguf.TENSOR_NAMES[tensor] + ".weight", factors.shape, lambda factors=factors: factors)


def tensor_type(tensor: GgufTensor, quant: str) -> gguf.GGMLQuantizationType:
    """F32 for vectors (norms, rope factors); the --quant type for matrices whose rows split into blocks."""
    if len(tensor.shape) == 1:
        return Q.F32
    wanted = QUANT_TYPES[quant][1]
    if quant == "q4_0" and tensor.name in _HIGH_PRECISION:
        wanted = Q.Q8_0
    block_size = gguf.GGML_QUANT_SIZES[wanted][0]
    return wanted if tensor.shape[-1] % block_size == 0 else Q.F16


def encoded_nbytes(tensor: GgufTensor, kind: gguf.GGMLQuantizationType) -> int:
    block_size, type_size = gguf.GGML_QUANT_SIZES[kind]
    return int(np.prod(tensor.shape)) // block_size * type_size


def encode_tensor(tensor: GgufTensor, data: np.ndarray, quant: str) -> np.ndarray:
    """The bytes to store for `data` (float32, from tensor.load()), as gguf-py's writer takes them."""
    kind = tensor_type(tensor, quant)
    if kind == Q.F32:
        return data.astype(np.float32)
    if kind == Q.F16:
        return data.astype(np.float16)
    return gguf.quants.quantize(data, kind)
