"""Count the ATen ops one decoding step dispatches, by where in the model (or the decoding loop) each comes from.

Why ops: on an H100 a decoding step of the Phi-4-mini-shaped LoRA model is host-bound (the device was busy 6.9 of
63 ms at one row, bench/results/serve_batching/step_profile_h100_session11), so every op the host dispatches costs
time whatever its size. The count is taken below autograd and below the composite ops (a TorchDispatchMode sees
`aten::linear` as the `t`, `view`, `mm`, `_unsafe_view` it runs), which is what the host pays for. Ops are split
into views (metadata only: no kernel on a GPU) and the rest, each of which launches about one kernel on a GPU; the
same model runs the same ops at any width, so a tiny model with Phi-4-mini's 32 layers counts Phi-4-mini's ops
(the CPU may pick other kernels: one SDPA op here is one or a few kernels on a GPU).

Each op is charged to the innermost source found on the Python stack when it is dispatched: a named function
(rotary, the KV cache, SDPA, mask building, the penalty and choice of tokens) or else the innermost module forward
running, by that module's role (the LoRA branch of a peft layer, its frozen base layer, an RMSNorm, ...).
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# (file path fragment, function name or None for any) -> source; checked innermost frame first, before modules.
FUNCTION_SOURCES = [
    ("transformers/cache_utils.py", None, "KV cache update"),
    ("transformers/masking_utils.py", None, "attention mask"),
    ("transformers/integrations/sdpa_attention.py", None, "attention (SDPA and its GQA/layout ops)"),
    ("transformers/modeling_rope_utils.py", None, "rotary"),
    ("/modeling_phi3.py", "apply_rotary_pos_emb", "rotary"),
    ("/modeling_phi3.py", "rotate_half", "rotary"),
    ("/modeling_llama.py", "apply_rotary_pos_emb", "rotary"),
    ("/modeling_llama.py", "rotate_half", "rotary"),
    ("lorakit/model/joint_rotary.py", "rotate_query_and_key", "rotary"),
    ("lorakit/inference/recent_tokens.py", None, "sampling and penalty"),
    ("lorakit/inference/decode.py", "_choose", "sampling and penalty"),
    ("lorakit/inference/running_batch.py", "_choose", "sampling and penalty"),
]
ROLES = ["LoRA branch", "frozen projections", "RMSNorm", "rotary", "attention (SDPA and its GQA/layout ops)",
         "attention (q/k/v split, reshapes)", "KV cache update", "attention mask", "MLP (activation, gate)",
         "residual adds (decoder layer)", "embedding", "LM head and logits", "model (positions, other)",
         "sampling and penalty", "batch bookkeeping"]
_NO_KERNEL = {"aten::_unsafe_view", "aten::empty", "aten::empty_strided", "aten::empty_like", "aten::lift_fresh", "aten::sym_size",
              "aten::sym_stride", "aten::sym_numel", "aten::sym_storage_offset"}


def module_roles(model: torch.nn.Module) -> dict[int, str]:
    """id(module) -> the role its own ops (those not inside a child module) play in a decoding step."""
    from peft.tuners.lora.layer import LoraLayer

    roles: dict[int, str] = {}
    for name, module in model.named_modules():
        leaf, kind = name.rsplit(".", 1)[-1], type(module).__name__
        if isinstance(module, LoraLayer):
            roles[id(module)] = "LoRA branch"
            for child in (*module.lora_A.values(), *module.lora_B.values(), *module.lora_dropout.values()):
                roles[id(child)] = "LoRA branch"
            roles[id(module.base_layer)] = "frozen projections"
        elif id(module) in roles:
            continue
        elif kind.endswith("RMSNorm"):
            roles[id(module)] = "RMSNorm"
        elif "Rotary" in kind:
            roles[id(module)] = "rotary"
        elif kind.endswith("Attention"):
            roles[id(module)] = "attention (q/k/v split, reshapes)"
        elif kind.endswith("MLP") or "act" in leaf:
            roles[id(module)] = "MLP (activation, gate)"
        elif kind.endswith("DecoderLayer"):
            roles[id(module)] = "residual adds (decoder layer)"
        elif isinstance(module, torch.nn.Embedding):
            roles[id(module)] = "embedding"
        elif leaf == "lm_head" or kind.endswith("ForCausalLM"):
            roles[id(module)] = "LM head and logits"
        elif isinstance(module, torch.nn.Linear):
            roles[id(module)] = "frozen projections"
        elif kind.endswith("Model") and "Peft" not in kind:
            roles[id(module)] = "model (positions, other)"
    return roles


@dataclass
class OpCount:
    """Ops dispatched: per source, per source that launches kernels (not views), and per op name."""

    by_source: Counter = field(default_factory=Counter)
    kernels_by_source: Counter = field(default_factory=Counter)
    by_name: Counter = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.by_source.values())

    @property
    def kernels(self) -> int:
        return sum(self.kernels_by_source.values())


class StepOpCounter(TorchDispatchMode):
    """Within `with StepOpCounter(roles) as counter:`, counts every ATen op into counter.count."""

    def __init__(self, roles: dict[int, str], outside: str = "batch bookkeeping"):
        super().__init__()
        self.roles, self.outside, self.count = roles, outside, OpCount()

    def _source(self) -> str:
        frame = sys._getframe(2)
        while frame is not None:
            code = frame.f_code
            for fragment, function, source in FUNCTION_SOURCES:
                if fragment in code.co_filename and (function is None or code.co_name == function):
                    return source
            if code.co_varnames[:1] == ("self",):  # a method: a module's forward (peft's, or one put in its place)
                role = self.roles.get(id(frame.f_locals["self"]))
                if role is not None:
                    return role
            frame = frame.f_back
        return self.outside

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        source, name = self._source(), func._overloadpacket._qualified_op_name
        self.count.by_source[source] += 1
        self.count.by_name[name] += 1
        if not (func.is_view or name in _NO_KERNEL):
            self.count.kernels_by_source[source] += 1
        return func(*args, **(kwargs or {}))


def count_ops(model: torch.nn.Module, step: Callable[[], object]) -> OpCount:
    """The ops that `step()` dispatches, charged to their sources in `model` (see module_roles)."""
    with StepOpCounter(module_roles(model)) as counter:
        step()
    return counter.count
