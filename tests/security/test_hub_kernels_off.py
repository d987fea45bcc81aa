"""transformers >= 5.25 kernelizes a loaded model with kernels fetched from the Hub unless told not to (and fails
where the `kernels` package is missing, as on the GPU machine in session 13): code from the Hub at load time is
remote code, which lorakit runs only where the user turns trust_remote_code on. lorakit picks its own kernels."""

import torch
import transformers.modeling_utils

from lorakit.config import ModelConfig
from lorakit.model.load import load_base_model, resolve_model_source


def test_a_loaded_model_is_never_kernelized_with_hub_kernels(tiny_llama_dir, monkeypatch):
    requested = []
    original = transformers.modeling_utils.PreTrainedModel.set_use_kernels

    def recording(self, use_kernels, *args, **kwargs):
        requested.append(use_kernels)
        return original(self, use_kernels, *args, **kwargs)

    monkeypatch.delenv("USE_HUB_KERNELS", raising=False)  # transformers' default: kernels on
    monkeypatch.setattr(transformers.modeling_utils.PreTrainedModel, "set_use_kernels", recording)
    config = ModelConfig(name=str(tiny_llama_dir))
    model = load_base_model(resolve_model_source(config), config, torch.device("cpu"), torch.float32)
    assert requested == [False]
    assert not getattr(model, "use_kernels", False)
