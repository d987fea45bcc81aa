"""Where does a freshly loaded QLoRA Phi-4-mini-shaped model keep its GPU memory? (parameters, buffers, dtypes)

    python bench/diagnose_qlora_memory.py   # after gpu_speed_memory.py saved the random model in /tmp/phi4-mini-random
"""

from __future__ import annotations

import collections
import sys

import torch

from lorakit.config import ModelConfig
from lorakit.model.load import load_base_model, resolve_model_source
from lorakit.model.quantize import nf4_config

directory = sys.argv[1] if len(sys.argv) > 1 else "/tmp/phi4-mini-random"
config = ModelConfig(name=directory, quantization="nf4")
before = torch.cuda.memory_allocated()
model = load_base_model(resolve_model_source(config), config, torch.device("cuda"), torch.bfloat16, nf4_config(torch.bfloat16))
print(f"allocated by loading: {(torch.cuda.memory_allocated() - before) / 2**30:.3f} GiB")
by_kind = collections.Counter()
seen = set()
for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
    if tensor.data_ptr() in seen:
        continue
    seen.add(tensor.data_ptr())
    key = (type(tensor).__name__, str(tensor.dtype), name.split(".")[-2] if "." in name else name)
    by_kind[key] += tensor.numel() * tensor.element_size()
for key, size in sorted(by_kind.items(), key=lambda item: -item[1])[:12]:
    print(f"{size / 2**30:8.3f} GiB  {key}")
head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
print("tie_word_embeddings", model.config.tie_word_embeddings, "| head is embedding:", head.weight is embedding.weight,
      "| same storage:", head.weight.data_ptr() == embedding.weight.data_ptr(), "| dtypes", head.weight.dtype, embedding.weight.dtype)
quant_state_bytes = 0
for module in model.modules():
    state = getattr(getattr(module, "weight", None), "quant_state", None)
    if state is not None:
        for value in (state.absmax, getattr(state, "code", None)):
            if torch.is_tensor(value):
                quant_state_bytes += value.numel() * value.element_size()
        nested = getattr(state, "state2", None)
        if nested is not None and torch.is_tensor(nested.absmax):
            quant_state_bytes += nested.absmax.numel() * nested.absmax.element_size()
print(f"quant states (absmax, codes): {quant_state_bytes / 2**30:.3f} GiB")
