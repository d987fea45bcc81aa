"""Issue 23, long examples on an emulated 8 GB card: the longest max_length each tool trains without running out
of memory, its tokens/s and peaks, and whether `lorakit plan` predicts lorakit's peak.

    python bench/long_context.py --out bench/results/peer_speed_honest/long_context [--lengths 8192,16384,...]

Same Phi-4-mini-shaped model as bench/peer_speed.py (its work folder is reused, or made), QLoRA (nf4), one
example per micro-batch, allocator capped at 7.25 GiB (an 8 GB card less its CUDA context) in both tools, with
expandable segments in both. Data: for each length L, synthetic clinical-note examples of just under L tokens
(a long note as the question, a summary of a quarter of the tokens as the answer; 15/16 to all of L, loss on the answer only).

- lorakit: `lorakit train` with model.max_length=L, training.batch_size=1 and gradient_checkpointing auto (the
  planner picks checkpointing, offloading and, where offloading is not enough, the MLP in sequence chunks,
  model/tiled_mlp.py, itself); a refusal of the planner is recorded as such.
- TRL best practice for long examples: SFTTrainer, no packing, batch 1, gradient checkpointing, TRL's activation
  offloading, its chunked LM head (TRL 1.16 always scores through it), liger's kernels, `sdpa` attention (one
  unpadded example per step: PyTorch's FlashAttention-2 kernel).
- `lorakit plan` (plan/run_plan.plan_run, what the CLI prints) for 8 GB at each length: predicted peak
  allocated and on-GPU bytes, against PyTorch's peak and nvidia-smi's.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import peer_speed  # noqa: E402
from lib.step_speed import run_speed  # noqa: E402
from lib.synthetic_chat import _text  # noqa: E402

ANSWER_SHARE = 0.25  # of each example's tokens: the summary the model learns to write


def long_examples(tokenizer, length: int, count: int, seed: int) -> list[tuple[str, str]]:
    """(note, summary) pairs whose rendered conversation (lorakit's system prompt + chat template) is just under
    `length` tokens: at most length - 64 (room for the tools' template differences), at least 1/16 (512 for short ones) less."""
    from lorakit.config import DEFAULT_SYSTEM_PROMPT

    def rendered(note: str, summary: str) -> int:
        messages = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": note},
                    {"role": "assistant", "content": summary}]
        return len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])

    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        words = length // 2  # a first guess at tokens per word, corrected below
        for _ in range(6):
            note = _text(rng, int(words * (1 - ANSWER_SHARE)))
            summary = _text(rng, int(words * ANSWER_SHARE))
            tokens = rendered(note, summary)
            if length - max(length // 16, 512) <= tokens <= length - 64:
                break
            words = int(words * (length - 256) / tokens)
        else:
            raise RuntimeError(f"no example of {length - max(length // 16, 512)}..{length - 64} tokens (last: {tokens})")
        pairs.append((note, summary))
    return pairs


def write_data(work: Path, length: int, count: int) -> tuple[Path, Path]:
    from transformers import AutoTokenizer

    from lorakit.config import DEFAULT_SYSTEM_PROMPT

    ours, theirs = work / f"long-{length}-lorakit.jsonl", work / f"long-{length}-trl.jsonl"
    pairs = long_examples(AutoTokenizer.from_pretrained(work / "model"), length, count, seed=length)
    with open(ours, "w") as mine, open(theirs, "w") as peer:
        for note, summary in pairs:
            mine.write(json.dumps({"instruction": note, "response": summary}) + "\n")
            peer.write(json.dumps({"prompt": [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
                                              {"role": "user", "content": note}],
                                   "completion": [{"role": "assistant", "content": summary}]}) + "\n")
    return ours, theirs


def planner_prediction(config: Path, length: int, memory_gib: float) -> dict:
    """What `lorakit plan CONFIG --gpu-memory 8GB --set ...` predicts, or its refusal."""
    from lorakit.config import load_config
    from lorakit.errors import ConfigError
    from lorakit.plan.memory import GIB
    from lorakit.plan.run_plan import plan_run

    run = load_config(config, [f"model.max_length={length}", "model.quantization=nf4", "training.batch_size=1",
                               "training.gradient_checkpointing=auto"])
    try:
        plan, _, _ = plan_run(run, int(memory_gib * GIB), 1)
    except ConfigError as refused:
        return {"refused": refused.message}
    estimate = plan.chosen.estimate
    return {"predicted_peak_allocated": estimate.peak_allocated, "predicted_on_gpu": estimate.peak_on_gpu(),
            "planned": f"micro-batch {plan.micro_batch}, checkpointing {plan.checkpointed_layers} layers, "
                       f"offload {plan.offload_activations}, tiled MLP {plan.tiled_mlp}",
            "terms_gib": {term: round(gib, 3) for term, gib in estimate.rows()}}


def lorakit_long_row(length: int, config: Path, data: Path, args, log) -> dict:
    run_dir, peak_file = args.work / f"long-lorakit-{length}", args.work / f"long-peak-{length}.json"
    peak_file.unlink(missing_ok=True)
    command = [sys.executable, str(REPO / "bench" / "lib" / "capped_run.py"), "--peak-file", str(peak_file)]
    if not args.smoke:
        command += ["--cap-gib", str(args.cap_gib)]
    command += ["-m", "lorakit", "train", str(config), "--overwrite"]
    for item in (f"output_dir={run_dir}", f"data.train_file={data}", f"model.max_length={length}",
                 f"model.quantization={'none' if args.smoke else 'nf4'}", "training.batch_size=1",
                 "training.gradient_checkpointing=auto"):
        command += ["--set", item]
    done, smi = peer_speed._run(command, log, f"lorakit long {length}", args.row_timeout)
    row = {"length": length, "tool": "lorakit", "nvidia_smi_peak_mib": smi.get(peer_speed.measured_gpu())}
    if done is None or done.returncode != 0:
        return row | {"error": "timeout" if done is None else (done.stderr + done.stdout)[-600:]}
    speed = run_speed(run_dir, args.warmup)
    plan = next((line for line in done.stdout.splitlines() + done.stderr.splitlines() if "memory plan" in line), "")
    row |= {"tokens_per_second": speed["tokens_per_second"], "measured_steps": speed["measured_steps"],
            "plan": plan.strip()[-160:], "losses": speed["train_losses"]}
    return row | (json.loads(peak_file.read_text()) if peak_file.exists() else {})


def trl_long_row(length: int, data: Path, args, log) -> dict:
    out = args.work / f"long-trl-{length}.json"
    out.unlink(missing_ok=True)
    command = [sys.executable, str(REPO / "bench" / "lib" / "trl_peer.py"), "--model", str(args.work / "model"),
               "--data", str(data), "--out", str(out), "--max-length", str(length), "--rows", "1", "--no-packing",
               "--quantization", "nf4", "--steps", str(args.steps), "--warmup", str(args.warmup), "--checkpointing",
               "--activation-offloading"]
    command += ["--smoke"] if args.smoke else ["--cap-gib", str(args.cap_gib)]
    done, smi = peer_speed._run(command, log, f"trl long {length}", args.row_timeout)
    row = {"length": length, "tool": "TRL best practice", "nvidia_smi_peak_mib": smi.get(peer_speed.measured_gpu())}
    if done is None or done.returncode != 0 or not out.exists():
        return row | {"error": "timeout" if done is None else done.stderr[-600:]}
    return row | json.loads(out.read_text())


def table(rows: list[dict], predictions: dict) -> str:
    gib = lambda value: "-" if value is None else f"{value / 2**30:.2f}"  # noqa: E731
    lines = ["| max_length | tool | trains? | tokens/s | PyTorch peak GiB (alloc / reserved) | nvidia-smi peak GiB | "
             "lorakit plan: predicted alloc / on GPU GiB (error vs measured alloc / nvidia-smi) | plan or failure |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        smi = row.get("nvidia_smi_peak_mib")
        prediction = predictions.get(row["length"], {}) if row["tool"] == "lorakit" else {}
        predicted = "-"
        if "predicted_peak_allocated" in prediction:
            predicted = f"{gib(prediction['predicted_peak_allocated'])} / {gib(prediction['predicted_on_gpu'])}"
            if "error" not in row and row.get("peak_allocated"):
                predicted += f" ({prediction['predicted_peak_allocated'] / row['peak_allocated'] - 1:+.1%}"
                predicted += f" / {prediction['predicted_on_gpu'] / (smi * 2**20) - 1:+.1%})" if smi else ")"
        elif "refused" in prediction:
            predicted = "refuses"
        if "error" in row:
            failure = row["error"].strip().replace("\n", " ").replace("|", "/")
            oom = "out of memory" in failure.lower() or "OutOfMemory" in failure
            what = "refused by the planner" if "needs at least" in failure else ("OOM" if oom else "failed")
            lines.append(f"| {row['length']:,} | {row['tool']} | no ({what}) | - | - | "
                         f"{'-' if smi is None else f'{smi / 1024:.2f}'} | {predicted} | {failure[-220:]} |")
            continue
        how = row.get("plan") or f"{row.get('attention')}, checkpointing, activation offloading"
        lines.append(f"| {row['length']:,} | {row['tool']} | yes | {row['tokens_per_second']:,.0f} | "
                     f"{gib(row.get('peak_allocated'))} / {gib(row.get('peak_reserved'))} | "
                     f"{'-' if smi is None else f'{smi / 1024:.2f}'} | {predicted} | {how} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/lorakit-peer-speed"))
    parser.add_argument("--lengths", default="8192,16384,24576,32768")
    parser.add_argument("--tools", default="lorakit,trl")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--cap-gib", type=float, default=peer_speed.eight_gb_cap_gib())
    parser.add_argument("--row-timeout", type=int, default=240)
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU: checks the script only")
    args = parser.parse_args()
    if not (args.work / "data.json").exists():  # the model and lorakit config of bench/peer_speed.py
        subprocess.run([sys.executable, str(REPO / "bench" / "peer_speed.py"), "--prepare-only", "--work",
                        str(args.work)] + (["--smoke"] if args.smoke else []), check=True)
    config = args.work / "long-config.yaml"
    base = yaml.safe_load(peer_speed.lorakit_config(args.work, args.warmup + args.steps, args.smoke).read_text())
    config.write_text(yaml.safe_dump(base))
    args.out.mkdir(parents=True, exist_ok=True)
    lengths = [int(n) for n in args.lengths.split(",")]
    predictions = {n: planner_prediction(config, n, 8.0) for n in lengths}
    print(json.dumps(predictions), flush=True)
    rows = []
    with open(args.out / "log.txt", "a") as log:
        for length in lengths:
            ours, theirs = write_data(args.work, length, args.warmup + args.steps + 1)
            for tool in args.tools.split(","):
                row = (lorakit_long_row(length, config, ours, args, log) if tool == "lorakit"
                       else trl_long_row(length, theirs, args, log))
                rows.append(row)
                with open(args.out / "rows.jsonl", "a") as handle:
                    handle.write(json.dumps(row) + "\n")
                print(json.dumps({k: v for k, v in row.items() if k != "losses"}), flush=True)
    (args.out / "predictions.json").write_text(json.dumps(predictions, indent=1))
    text = table(rows, predictions)
    (args.out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
