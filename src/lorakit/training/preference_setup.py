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


def prepare_for_method(model, config: RunConfig, targets: list[str], *, shares_prefixes: bool) -> dict:
    """Load the starting adapter, freeze DPO's reference, switch dropout off; returns the run-identity entries
    (what a resume must find unchanged). `shares_prefixes`: whether the session collates with shared prefixes
    (training/session.takes_shared_prefixes)."""
    training = config.training
    identity: dict = {}
    if training.init_adapter is not None:
        identity["init_adapter_sha256"] = load_init_adapter(model, training.init_adapter, config.lora, targets)
    if training.method == "sft":
        return {**identity, **method_identity(config, shares_prefixes)}
    if training.method == "dpo" and training.init_adapter is not None:
        add_reference_adapter(model)
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return {**identity, **method_identity(config, shares_prefixes)}


def method_identity(config: RunConfig, shares_prefixes: bool) -> dict:
    """The method's settings a resume must find unchanged: the preference settings, and for packed SFT and
    preference pairs whether their rows share prefixes (unpacked SFT records nothing, so those runs resume as before).

    shared_prefix changes no loss, only the order of float additions: recorded so a resume stays bit-exact. The
    layout depends on whether sharing took effect, not on training.shared_prefix alone: a NEFTune run, or a model
    without lorakit_varlen (for packed SFT also one with a quantized head), keeps packed examples whole or pairs
    padded whatever the flag says. The flag (`packed_shared_prefix`, `preference_shared_prefix`: what checkpoints
    recorded alone until sessions 12 and 13) is kept beside the effect: a checkpoint without the effect's key is
    compared on the flag, as it was written (training/resume_drift.py).

    >>> from lorakit.config import RunConfig
    >>> neftune = RunConfig.model_validate({"data": {"train_file": "x.jsonl"},
    ...                                     "training": {"packing": True, "neftune_noise_alpha": 5}})
    >>> method_identity(neftune, neftune.training.shares_prefixes)
    {'packed_shared_prefix': True, 'packed_rows_share_prefixes': False}
    >>> dpo = RunConfig.model_validate({"data": {"train_file": "x.jsonl"},
    ...                                 "training": {"method": "dpo", "neftune_noise_alpha": 5}})
    >>> method_identity(dpo, dpo.training.shares_prefixes)["preference_pairs_share_prefixes"]
    False
    """
    training = config.training
    if training.method == "sft":
        if not training.packing:
            return {}
        return {"packed_shared_prefix": training.shared_prefix, "packed_rows_share_prefixes": shares_prefixes}
    return {"training_method": training.method, "preference_beta": training.beta,
            "preference_shared_prefix": training.shared_prefix, "preference_pairs_share_prefixes": shares_prefixes,
            **({"simpo_gamma": training.simpo_gamma} if training.method == "simpo" else {})}
