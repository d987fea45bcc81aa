"""The DPO memory plan against what the session-10 H100 rows really held, on a CPU: no GPU, no weights.

    python bench/preference_plan_check.py [--work /tmp/plan-check] [--out bench/results/preference_speed/plan_check]

bench/preference_speed.py's lorakit rows (shared prefixes, QLoRA, 4 pairs per micro-batch x 2, 10 steps) measured
PyTorch's allocated peak on an H100 (bench/results/preference_speed/table_h100_session10/rows.jsonl). This rebuilds
the same run without the GPU: the Phi-4-mini shape's config.json (no weights), the same 512 synthetic pairs
(preference_speed.synthetic_pairs, seed 0), the same config (preference_speed.lorakit_config), lorakit's own data
preparation, the run's data order (training/batches.run_pair_layout) and the planner as `lorakit train` calls it.
For each row it prints the planner's MemoryEstimate terms at the settings the row ran with (micro-batch 4, the
checkpointing its plan chose), the prediction over the measured peak, and the plan it would choose now; and the
same for the padded rows ("lorakit, shared_prefix off").

The H100 run's torch 2.11 flash kernel took grouped-query k/v without expanding them (its plan line is reproduced
only so), so the estimate here uses kv_expanded=False whatever this machine's torch says.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from lib.capped_run import eight_gb_cap_gib  # noqa: E402
from lib.phi4_mini_run import PHI4_MINI, TOKENIZER  # noqa: E402
from preference_speed import lorakit_config, synthetic_pairs  # noqa: E402

ROWS = REPO / "bench" / "results" / "preference_speed" / "table_h100_session10" / "rows.jsonl"
# setting -> (checkpointed layers the session-10 plan chose, the GPU memory the planner planned for)
SETTINGS = {"8gb-qlora": (29, None), "gpu-qlora": (0, 80 * 2**30)}


def prepare(work: Path) -> Path:
    """config.json + tokenizer (no weights), the pairs file and the run config, as preference_speed.prepare makes
    them."""
    from transformers import AutoTokenizer, Phi3Config

    from lorakit.config import DEFAULT_SYSTEM_PROMPT

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    (work / "model").mkdir(parents=True, exist_ok=True)
    Phi3Config(**PHI4_MINI).save_pretrained(work / "model")
    tokenizer.save_pretrained(work / "model")
    with open(work / "pairs.jsonl", "w") as handle:
        for pair in synthetic_pairs(tokenizer, DEFAULT_SYSTEM_PROMPT, 512, seed=0):
            handle.write(json.dumps({k: v for k, v in pair.items() if k != "lengths"}) + "\n")
    return lorakit_config(work, 10, smoke=False)  # warmup 2 + 8 measured steps, as the session-10 table ran


def check(work: Path) -> list[dict]:
    from transformers import AutoTokenizer

    from lorakit.config import load_config
    from lorakit.plan.candidates import micro_batch_settings
    from lorakit.plan.config_view import pair_micro_batches, train_settings
    from lorakit.plan.memory import CUDA_CONTEXT_BYTES, GIB, ModelShape, estimate_peak_memory
    from lorakit.plan.run_plan import plan_training
    from lorakit.training.batches import run_pair_layout
    from lorakit.training.dataset import prepare_data

    config_path = prepare(work)
    run = load_config(config_path, ["model.quantization=nf4", "training.gradient_checkpointing=auto",
                                    "training.shared_prefix=true"])
    data = prepare_data(run, AutoTokenizer.from_pretrained(run.model.name))
    pairs = run_pair_layout(data.pair_layout, run)
    model_config = json.loads((work / "model" / "config.json").read_text())
    shape = ModelShape.from_config(model_config)
    base = replace(train_settings(run, "nf4", dtype_bytes=2, cuda=True, pairs=pairs), kv_expanded=False)
    positions, keys = pair_micro_batches(run, pairs)(4)
    rows = [json.loads(line) for line in ROWS.read_text().splitlines()]
    measured = {r["setting"]: r for r in rows if r["tool"] == "lorakit"}
    results = []
    for setting, (layers, memory) in SETTINGS.items():
        settings = replace(micro_batch_settings(base, 0, layout=(positions, keys)), checkpointed_layers=layers)
        estimate = estimate_peak_memory(shape, settings)
        row = measured[setting]
        padded = _padded_row(run, data, shape, next(r for r in rows if r["setting"] == setting
                                                     and r["tool"] == "lorakit, shared_prefix off"))
        memory = memory or int(eight_gb_cap_gib() * GIB) + CUDA_CONTEXT_BYTES
        plan = plan_training(run.model_copy(update={"training": run.training.model_copy(update={"batch_size": 4})}),
                             model_config, memory, dtype_bytes=2, nf4_available=True,
                             longest_example=data.longest_example, pairs=pairs)
        results.append({
            "setting": setting, "micro_batch_positions": positions, "micro_batch_keys": keys,
            "checkpointed_layers": layers, "terms_gib": {k: round(v, 3) for k, v in estimate.rows()},
            "predicted_gib": round(estimate.peak_allocated / GIB, 3),
            "measured_gib": round(row["peak_allocated"] / GIB, 3),
            "over_measured": round(estimate.peak_allocated / row["peak_allocated"] - 1, 4),
            "session10_plan": row["plan"],
            "plan_now": f"micro-batch {plan.micro_batch}, checkpointing {plan.checkpointing_text}, "
                        f"predicted peak {plan.chosen.estimate.peak_allocated / GIB:.2f} GiB",
            "padded": padded,
        })
    return results


def _padded_row(run, data, shape, row: dict) -> dict:
    """The row "lorakit, shared_prefix off": 4 pairs padded into 8 rows of the data's longest sequence (which the
    measured steps reached: 8,120 positions), at the checkpointing its plan chose (from its plan line). Its attention
    is transformers' sdpa under a padding mask (plan/attention_memory.py): k/v repeated to every query head as this
    machine's transformers does under a mask, and the mask."""
    from lorakit.plan.config_view import planned_length, train_settings
    from lorakit.plan.memory import GIB, estimate_peak_memory

    padded = run.model_copy(update={"training": run.training.model_copy(update={"shared_prefix": False})})
    layers = 0 if "checkpointing none" in row["plan"] else int(row["plan"].split("checkpointing ")[1].split(" of")[0])
    settings = replace(train_settings(padded, "nf4", dtype_bytes=2, cuda=True, longest_example=data.longest_example),
                       kv_expanded=False,
                       checkpointed_layers=layers,
                       tokens_per_micro_batch=4 * planned_length(padded, data.longest_example))
    predicted = estimate_peak_memory(shape, settings).peak_allocated
    return {"positions": settings.tokens_per_micro_batch, "checkpointed_layers": layers,
            "predicted_gib": round(predicted / GIB, 3), "measured_gib": round(row["peak_allocated"] / GIB, 3),
            "over_measured": round(predicted / row["peak_allocated"] - 1, 4), "session10_plan": row["plan"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/preference-plan-check"))
    parser.add_argument("--out", type=Path, help="write rows.json here")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results = check(args.work)
    for result in results:
        print(f"{result['setting']}: a micro-batch of at most {result['micro_batch_positions']} positions, "
              f"{result['micro_batch_keys']} keys; {result['checkpointed_layers']} layers checkpointed")
        for term, gib in result["terms_gib"].items():
            print(f"    {term:36s} {gib:7.3f} GiB")
        print(f"    measured (H100, session 10)          {result['measured_gib']:7.3f} GiB: predicted "
              f"{result['over_measured']:+.1%}")
        print(f"    session 10: {result['session10_plan']}\n    now:        {result['plan_now']}")
        padded = result["padded"]
        print(f"  shared_prefix off: {padded['positions']} padded positions, {padded['checkpointed_layers']} layers "
              f"checkpointed: predicted {padded['predicted_gib']:.3f} GiB, measured {padded['measured_gib']:.3f} "
              f"({padded['over_measured']:+.1%}; session 10: {padded['session10_plan']})")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "rows.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
