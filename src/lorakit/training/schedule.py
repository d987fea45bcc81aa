"""Optimizer and learning-rate schedule over the trainable (LoRA) parameters only."""

from __future__ import annotations

import torch

from lorakit.config import TrainingConfig
from lorakit.training.sharding import is_sharded

__all__ = ["build_optimizer", "build_scheduler"]


def build_optimizer(model: torch.nn.Module, config: TrainingConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    assert params, "LoRA must leave some parameters trainable"
    # Not for FSDP2's sharded (DTensor) parameters: the foreach path is the one FSDP2 documents; LoRA's few MB
    # of optimizer work make the difference negligible.
    use_fused = all(p.is_cuda for p in params) and not is_sharded(model)
    if config.loraplus_lr_ratio is not None:
        # LoRA+: B matrices at lr x ratio, A matrices at lr (peft's grouping; the schedule scales every group).
        from peft.optimizers import create_loraplus_optimizer

        return create_loraplus_optimizer(
            model, torch.optim.AdamW, lr=config.learning_rate, loraplus_lr_ratio=config.loraplus_lr_ratio,
            loraplus_weight_decay=config.weight_decay, betas=(0.9, 0.999), fused=use_fused or None,
        )
    return torch.optim.AdamW(
        params, lr=config.learning_rate, weight_decay=config.weight_decay, betas=(0.9, 0.999), fused=use_fused or None
    )


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainingConfig):
    from transformers import get_scheduler

    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[config.lr_scheduler]
    return get_scheduler(name, optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=config.max_steps)
