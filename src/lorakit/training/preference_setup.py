"""Set a freshly attached LoRA model up for the configured training method, before the optimizer exists.

- training.init_adapter: the starting adapter's weights copied in (training/init_adapter.py).
- DPO from a starting adapter: that adapter frozen as the reference (training/preference_loss.py).
- Preference methods: dropout off, as TRL's preference trainers do by default (`disable_dropout=True`): with
  dropout the policy's and the reference's log-probs of one answer differ by noise, so the implicit rewards and
  DPO's loss at step 1 would not be what they mean.
"""

from __future__ import annotations

from torch import nn

from lorakit.config import RunConfig
from lorakit.training.init_adapter import load_init_adapter
from lorakit.training.preference_loss import add_reference_adapter

__all__ = ["prepare_for_method", "method_identity"]


def prepare_for_method(model, config: RunConfig, targets: list[str]) -> dict:
    """Load the starting adapter, freeze DPO's reference, switch dropout off; returns the run-identity entries
    (what a resume must find unchanged)."""
    training = config.training
    identity: dict = {}
    if training.init_adapter is not None:
        identity["init_adapter_sha256"] = load_init_adapter(model, training.init_adapter, config.lora, targets)
    if training.method == "sft":
        return {**identity, **method_identity(config)}
    if training.method == "dpo" and training.init_adapter is not None:
        add_reference_adapter(model)
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return {**identity, **method_identity(config)}


def method_identity(config: RunConfig) -> dict:
    """The method's settings a resume must find unchanged: the preference settings, and for packed SFT only
    training.shared_prefix (unpacked SFT records nothing, so those runs resume as before)."""
    training = config.training
    if training.method == "sft":
        # a packed row's layout (float order) depends on shared_prefix, as a preference batch's does
        return {"packed_shared_prefix": training.shared_prefix} if training.packing else {}
    # shared_prefix changes no loss, only the order of float additions: recorded so a resume stays bit-exact
    return {"training_method": training.method, "preference_beta": training.beta,
            "preference_shared_prefix": training.shared_prefix,
            **({"simpo_gamma": training.simpo_gamma} if training.method == "simpo" else {})}
