"""The memory plan per GPU for training.distributed fsdp, and what `auto` resolves to: bf16 Phi-4-mini does not fit
an 8 GB card alone, but sharded over 2 it does (the GPU benchmark's 8 GB row, bench/fsdp.py)."""

from __future__ import annotations

import pytest

from conftest import PHI4_MINI

from lorakit.config import RunConfig
from lorakit.errors import ConfigError
from lorakit.plan.memory import GIB, ModelShape, estimate_peak_memory
from lorakit.plan.run_plan import resolve_auto_settings
from lorakit.plan.sharded import UNSHARDED_LAYERS, sharded_estimate

EIGHT_GB_CARD = 8 * GIB


def run_config(quantization: str, distributed: str = "auto") -> RunConfig:
    return RunConfig.model_validate({
        "model": {"name": "phi4", "max_length": 512, "quantization": quantization},
        "training": {"packing": True, "batch_size": "auto", "gradient_checkpointing": "auto",
                     "distributed": distributed},
        "data": {"train_file": "x.jsonl"},
    })


def resolve(config: RunConfig, world_size: int):
    return resolve_auto_settings(config, PHI4_MINI, cuda=True, dtype_bytes=2, nf4_available=True,
                                 memory_bytes=EIGHT_GB_CARD, world_size=world_size)


def test_sharded_estimate_halves_weights_and_lora_states_but_not_activations():
    shape = ModelShape.from_config(PHI4_MINI)
    settings = resolve(run_config("none"), world_size=2).plan.chosen.settings
    one, four = estimate_peak_memory(shape, settings), sharded_estimate(shape, settings, 4)
    layer = (shape.linear_params_per_layer + 2 * shape.hidden) * 2
    root = (shape.embedding_params + shape.hidden) * 2  # tied head: no weights of its own
    assert four.weights == one.weights // 4 + root + UNSHARDED_LAYERS * layer
    assert four.lora_states < one.lora_states / 3
    assert (four.saved_activations, four.backward_working, four.loss) == (
        one.saved_activations, one.backward_working, one.loss)


def test_auto_shards_bf16_phi4_mini_over_two_8gb_gpus():
    with pytest.raises(ConfigError, match="GiB of GPU memory"):
        resolve(run_config("none"), world_size=1)  # one 8 GB card cannot hold bf16 Phi-4-mini
    two = resolve(run_config("none"), world_size=2)
    assert two.config.training.distributed == "fsdp" and two.config.model.quantization == "none"
    assert two.plan.chosen.fits and two.plan.chosen.estimate.peak_on_gpu() <= EIGHT_GB_CARD
    # The plan docs/training.md prints for this case (NCCL's reserve included).
    assert (two.plan.micro_batch, two.plan.checkpointing_text, not two.plan.offload_activations) == (
        2, "31 of 32 layers", True)
    assert round(two.plan.chosen.estimate.peak_allocated / GIB, 1) == 5.6


def test_auto_keeps_ddp_when_one_gpu_fits_and_for_qlora():
    assert resolve(run_config("nf4"), world_size=2).config.training.distributed == "ddp"  # nf4 fits one card
    assert resolve(run_config("auto"), world_size=2).config.model.quantization == "nf4"  # auto: nf4 before sharding
    assert resolve(run_config("auto"), world_size=2).config.training.distributed == "ddp"
    forced = resolve(run_config("auto", distributed="fsdp"), world_size=2)
    assert forced.config.training.distributed == "fsdp" and forced.config.model.quantization == "none"


def test_several_gpus_plan_without_the_memory_nccl_holds(monkeypatch):
    """NCCL's buffers are outside PyTorch's allocator: a several-GPU run plans for the card less NCCL_BYTES."""
    from lorakit.plan import run_plan

    seen = []
    real = run_plan.plan_training

    def recording(config, model_config, gpu_memory_bytes, **kwargs):
        seen.append(gpu_memory_bytes)
        return real(config, model_config, gpu_memory_bytes, **kwargs)

    monkeypatch.setattr(run_plan, "plan_training", recording)
    resolve(run_config("nf4", distributed="ddp"), world_size=1)
    resolve(run_config("nf4", distributed="ddp"), world_size=2)
    assert seen == [EIGHT_GB_CARD, EIGHT_GB_CARD - run_plan.NCCL_BYTES]
