"""`lorakit plan CONFIG [--gpu-memory 8GB] [--gpus N]`: predicted peak GPU memory and the fastest settings that fit,
from the model's config.json alone (no weights are downloaded); a preference run's plan counts the run's own pairs
where its data files and the model's tokenizer can be read (training/planned_pairs.py)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from lorakit.cli.console import console
from lorakit.config import load_config
from lorakit.plan.memory import GIB, checkpointing_text
from lorakit.plan.run_plan import parse_memory_size
from lorakit.training.planned_pairs import plan_run_on_data


def _settings_text(candidate, layers: int) -> str:
    settings = candidate.settings
    checkpointing = checkpointing_text(settings.checkpointed_layers, layers, settings.offload_activations,
                                       settings.tiled_mlp)
    return (f"{settings.quantization}, micro-batch {candidate.micro_batch} "
            f"({settings.tokens_per_micro_batch:,} tokens), checkpointing {checkpointing}")


def plan(
    config_path: Path = typer.Argument(..., metavar="CONFIG", help="YAML run config."),
    gpu_memory: str | None = typer.Option(None, "--gpu-memory", help="GPU memory to plan for, e.g. 8GB (default: this GPU)."),
    overrides: list[str] = typer.Option([], "--set", help="Override a config value, e.g. --set model.max_length=2048."),
    show: int = typer.Option(5, "--show", min=1, help="How many of the fastest candidates to list."),
    gpus: int = typer.Option(1, "--gpus", min=1, help="GPUs the run will train on (one process each, as `lorakit "
                             "train --gpus N`): the plan per GPU for the training.distributed strategy it resolves to."),
) -> None:
    """Predict peak GPU memory and pick the fastest quantization, micro-batch and checkpointing that fit."""
    config = load_config(config_path, list(overrides))
    # DPO/ORPO/SimPO: on the run's own pairs where its data can be read
    chosen_plan, config, model_config, pairs = plan_run_on_data(
        config, parse_memory_size(gpu_memory) if gpu_memory else None, gpus)
    chosen = chosen_plan.chosen
    console.print(f"[bold]{config.model.name}[/] ({model_config.get('model_type', '?')}), max_length "
                  f"{config.model.max_length}, LoRA r={config.lora.r}, planned for {chosen_plan.gpu_memory_bytes / GIB:.1f} GiB per GPU"
                  + (" (after NCCL's buffers)" if gpus > 1 else ""))
    if pairs is not None:
        console.print(f"preference pairs: {pairs.note}", markup=False, highlight=False)
    # ddp replicates the model, LoRA and optimizer state on every GPU, so one GPU's plan is every GPU's; fsdp
    # shards the weights and LoRA states over the GPUs (plan/sharded.py).
    strategy = f", {config.training.distributed} over {gpus} GPUs" if gpus > 1 else ""
    console.print(f"[green]plan:[/] {_settings_text(chosen, chosen_plan.layers)}{strategy}")
    if chosen_plan.dequantized_text:  # nf4: what the plan leaves, spent last (plan/dequantized.py)
        console.print(chosen_plan.dequantized_text)
    breakdown = Table(title="predicted peak per GPU (GiB)", show_header=False)
    for term, gib in chosen.estimate.rows():
        breakdown.add_row(term, f"{gib:.2f}")
    breakdown.add_row("needed on the GPU (+ allocator slack, CUDA context)", f"{chosen.estimate.peak_on_gpu() / GIB:.2f}")
    console.print(breakdown)
    candidates = Table(title="fastest candidates")
    for column in ("settings", "peak GiB", "on GPU GiB", "relative time", "fits"):
        candidates.add_column(column)
    for candidate in chosen_plan.candidates[:show]:
        candidates.add_row(_settings_text(candidate, chosen_plan.layers), f"{candidate.estimate.peak_allocated / GIB:.2f}",
                           f"{candidate.estimate.peak_on_gpu() / GIB:.2f}", f"{candidate.relative_time:.2f}",
                           "yes" if candidate.fits else "no")
    console.print(candidates)
