"""bench/peer_speed.py's accounting: each row's step counts (lorakit's from its own packer; TRL's come from
bench/lib/trl_peer.py), its utilisation three ways (bench/lib/flops.py) and the printed table."""

from __future__ import annotations

import re
from pathlib import Path

from lib.flops import StepCounts, executed_flops, model_flops, old_flops, segment_square, utilisation


def lorakit_step_counts(config: Path, max_length: int, micro_batch: int, warmup: int, steps: int,
                        shared_prefix: bool = False) -> list[StepCounts]:
    """Real tokens, labelled positions, computed positions and attention's squared lengths of each measured step of
    a `lorakit train` run of `config` (accumulation 1), from lorakit's own data preparation, packer and (with
    `shared_prefix`: the run said it shares prefixes) shared-prefix collate with the run's seed: the rows lorakit
    trained on, in its order."""
    from transformers import AutoTokenizer

    from lorakit.config import load_config
    from lorakit.data.shared_packing import collate_packed_shared
    from lorakit.training.batches import packed_epoch_groups
    from lorakit.training.dataset import prepare_data

    run = load_config(config, [f"model.max_length={max_length}"])
    examples = prepare_data(run, AutoTokenizer.from_pretrained(run.model.name)).splits.train
    groups = packed_epoch_groups(examples, micro_batch * max_length, run.seed, 0)
    counts = []
    for group in groups[warmup:warmup + steps]:
        chosen = [examples[i] for i in group]
        # the first label of each example is ignored in a packed row (collate_packed), the rest as rendered
        labelled = sum(sum(label != -100 for label in e.labels[1:]) for e in chosen)
        tokens = sum(len(e.input_ids) for e in chosen)
        if not shared_prefix:
            counts.append(StepCounts(tokens, labelled, sum(len(e.input_ids) ** 2 for e in chosen)))
            continue
        batch = collate_packed_shared(chosen)
        queries, keys = (batch[name].diff().tolist() for name in ("cu_seq_lens_q", "cu_seq_lens_k"))
        assert len(batch["predicted_labels"]) == labelled
        counts.append(StepCounts(tokens, labelled, sum(segment_square(q, k) for q, k in zip(queries, keys)),
                                 positions=batch["input_ids"].shape[1]))
    return counts


def planned_micro_batch(plan: str) -> int | None:
    """The micro-batch of lorakit's printed memory plan.

    >>> planned_micro_batch("memory plan: nf4, micro-batch 16, checkpointing 31 of 32 layers, predicted peak 6.1 GiB")
    16
    >>> planned_micro_batch("") is None
    True
    """
    found = re.search(r"micro-batch (\d+)", plan)
    return int(found.group(1)) if found else None


def planned_checkpointed_layers(plan: str) -> int:
    """Checkpointed layers of lorakit's printed memory plan (plan/memory.checkpointing_text).

    >>> planned_checkpointed_layers("memory plan: nf4, micro-batch 16, checkpointing 31 of 32 layers, predicted ...")
    31
    >>> planned_checkpointed_layers("memory plan: nf4, micro-batch 1, checkpointing all 32 layers, offloaded to CPU")
    32
    >>> planned_checkpointed_layers("memory plan: none, micro-batch 16, checkpointing none, predicted peak 30 GiB")
    0
    >>> planned_checkpointed_layers("memory plan: nf4, micro-batch 16, checkpointing none, dequantized weights kept: "
    ...                             "32 of 32 layers, 6.0 GiB, predicted peak 37.6 GiB per GPU")
    0
    """
    found = re.search(r"checkpointing (?:(\d+) of \d+|all (\d+)) layers", plan)
    return int(found.group(1) or found.group(2)) if found else 0


def row_utilisation(row: dict, shape: dict, tflops: float) -> dict:
    """MFU on model FLOPs (LM head where the tool runs it), on executed FLOPs (recomputation included) and the old
    count (LM head on every token), from the row's measured step counts and median tokens/s."""
    positions = row.get("step_positions", row["step_tokens"])  # TRL and unshared rows compute every real token
    counts = sum((StepCounts(*c) for c in zip(row["step_tokens"], row["step_labelled"], row["step_square_lengths"],
                                               positions)), StepCounts(0, 0, 0))
    speed = row["tokens_per_second"]
    executed = executed_flops(shape, counts, checkpointed_layers=row.get("checkpointed_layers", 0),
                              head_recomputed=row.get("head_recomputed", False))
    return {"mfu": utilisation(model_flops(shape, counts), counts.tokens, speed, tflops),
            "hfu": utilisation(executed, counts.tokens, speed, tflops),
            "mfu_old": utilisation(old_flops(shape, counts), counts.tokens, speed, tflops),
            "tokens_per_step": counts.tokens / len(row["step_tokens"]),
            "positions_per_step": counts.computed / len(row["step_tokens"]),
            "labelled_per_step": counts.labelled / len(row["step_tokens"])}


def table(rows: list[dict], data: dict, shape: dict) -> str:
    tflops = data.get("matmul_tflops") or 1.0  # smoke runs (CPU): a placeholder rate, the percentages mean nothing
    lines = ["| setting | tool | tokens/s | vs TRL | real tokens / labelled per step | positions computed per step | "
             "MFU (performed FLOPs) | HFU (executed) | old MFU (head on every token) | PyTorch peak GiB (alloc / "
             "reserved) | nvidia-smi peak GiB | attention, plan |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if "error" in row or "skipped" in row:
            why = f"{row['error'][-150:]!r}" if "error" in row else row["skipped"]
            lines.append(f"| {row['setting']} | {row['tool']} | {'failed' if 'error' in row else 'skipped'} | "
                         f"| | | | | | | | {why} |")
            continue
        peer = next((r for r in rows if r["setting"] == row["setting"] and r["tool"] == "TRL best practice"
                     and "error" not in r), None)
        ratio = f"{row['tokens_per_second'] / peer['tokens_per_second']:.2f}x" if peer else "-"
        use = row_utilisation(row, shape, tflops) if "step_tokens" in row else None
        gib = lambda value: "-" if value is None else f"{value / 2**30:.2f}"  # noqa: E731
        smi = "-" if row.get("nvidia_smi_peak_mib") is None else f"{row['nvidia_smi_peak_mib'] / 1024:.2f}"
        how = row.get("plan") or (f"{row.get('attention')}, allocator {row.get('allocator')}" if "attention" in row
                                  else "PyTorch varlen flash, expandable segments")
        if row.get("alloc_retries"):  # lorakit rows record them (bench/lib/capped_run.py)
            how += f"; allocator retries {row['alloc_retries']:,}"
        work = (f"{use['tokens_per_step']:,.0f} / {use['labelled_per_step']:,.0f} | {use['positions_per_step']:,.0f} | "
                f"{use['mfu']:.1%} | {use['hfu']:.1%} | {use['mfu_old']:.1%}") if use else "- | - | - | - | -"
        lines.append(f"| {row['setting']} | {row['tool']} | {row['tokens_per_second']:,.0f} | {ratio} | {work} | "
                     f"{gib(row.get('peak_allocated'))} / {gib(row.get('peak_reserved'))} | {smi} | {how} |")
    return "\n".join(lines)
