"""The preference pairs `lorakit plan` plans a DPO/ORPO/SimPO run on: the run's own where its data files can be read.

`lorakit train` plans on its training split's pairs with its data order (training/session.build_session:
`prepare_data`, then `run_pair_layout`). `lorakit plan` makes the same two calls where the data files exist and the
model's tokenizer can be read without its weights (model/named_tokenizer.load_model_tokenizer), so both print the
same plan for the same config; otherwise it keeps the data-free bound (a micro-batch of the largest pair
model.max_length allows) and says why. A data file that exists but is broken stops `lorakit plan` with the DataError
(file, line, field) that `lorakit train` would stop with, saying `lorakit plan` stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lorakit.config import RunConfig
from lorakit.data.preference_batch import PairLayout
from lorakit.errors import ModelLoadError
from lorakit.plan.run_plan import TrainingPlan, plan_run
from lorakit.training.batches import run_pair_layout
from lorakit.training.dataset import prepare_data

__all__ = ["PLAN_STOPPED", "PlannedPairs", "read_planned_pairs", "plan_run_on_data"]

# what a broken pairs file's DataError says under `lorakit plan` (under `lorakit train`: preference training did not
# start); the problems listed and the hint are train's
PLAN_STOPPED = "`lorakit plan` stopped, and `lorakit train` would not start"


@dataclass(frozen=True)
class PlannedPairs:
    """What a preference plan counts: the run's pairs with its order (None: the data-free bound), the data's longest
    sequence (padded pairs are padded to it), and one line saying which of the two the plan used."""

    layout: PairLayout | None
    longest_example: int | None
    note: str
    data_rows: int | None = None  # the training pairs: the most an `auto` micro-batch takes


def read_planned_pairs(config: RunConfig) -> PlannedPairs | None:
    """The run's training pairs as `lorakit train` plans on them, the data-free bound with its reason, or None for
    an SFT run (its plan reads no data)."""
    if config.training.method == "sft":
        return None
    files = config.data.train_files
    named = ", ".join(files)
    missing = [file for file in files if not Path(file).exists()]
    if missing:
        return PlannedPairs(None, None, f"data-free bound: {', '.join(missing)} not read (no such file)")
    try:
        # imported here: model/hub imports huggingface_hub, which the CLI imports only in the command that needs
        # it, so HF_* variables set for a child process are read there (tests/model/test_hub_faults.py's zygote)
        from lorakit.model.named_tokenizer import load_model_tokenizer

        tokenizer = load_model_tokenizer(config.model)
    except ModelLoadError as exc:  # e.g. a folder with config.json alone: the plan still stands without data
        return PlannedPairs(None, None, f"data-free bound: {named} not read (no tokenizer to render it: {exc.message})")
    data = prepare_data(config, tokenizer, action=PLAN_STOPPED)  # a broken file: `lorakit train`'s DataError
    layout = run_pair_layout(data.pair_layout, config)
    if layout is None:
        return PlannedPairs(None, None, f"data-free bound: {named} leaves no training pairs after splitting")
    return PlannedPairs(layout, data.longest_example, f"planned on {len(layout.positions):,} pairs of {named} (the run's "
                        "training split, in its data order)",
                        data.rows_to_fill(packing=config.training.packing, max_length=config.model.max_length))


def plan_run_on_data(config: RunConfig, gpu_memory_bytes: int | None,
                     world_size: int = 1) -> tuple[TrainingPlan, RunConfig, dict, PlannedPairs | None]:
    """`lorakit plan` and the studio's plan: plan/run_plan.plan_run, on a preference run's own pairs where they can
    be read (`read_planned_pairs`, whose note the caller shows; None for SFT)."""
    pairs = read_planned_pairs(config)
    plan, config, model_config = plan_run(config, gpu_memory_bytes, world_size, pairs=pairs.layout if pairs else None,
                                          longest_example=pairs.longest_example if pairs else None,
                                          data_rows=pairs.data_rows if pairs else None)
    return plan, config, model_config, pairs
