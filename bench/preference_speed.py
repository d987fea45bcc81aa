"""Issue 24's speed anchor: `lorakit train` with training.method=dpo (the CLI) against TRL 1.16's DPOTrainer as its
documentation recommends for QLoRA (bench/lib/trl_dpo_peer.py), same model, same pairs, same GPU, one run.

    python bench/preference_speed.py --out bench/results/preference_speed/OUT [--settings 8gb-qlora,gpu-qlora] [--smoke]

Model: the Phi-4-mini-shaped Phi3 with random weights of bench/peer_speed.py (bench/lib/phi4_mini_run.py), bf16
safetensors, loaded as nf4 by both tools. Data: 512 synthetic preference pairs in TRL's conversational format
(`prompt` = [system, user], `chosen`/`rejected` = [assistant]), one file that both tools read: the prompt (system
prompt, question and template) is 200-512 tokens, the chosen and the rejected answer each lognormal around 270
tokens, independently, and each side (prompt + answer) fits max_length 1024 in both tools, so neither truncates.

Equal work per step: 8 pairs per optimizer step in both tools, as micro-batches of 4 pairs x accumulation 2.
TRL pads each micro-batch into 8 rows (chosen, then rejected; TRL 1.16's DPO `padding_free` is "temporarily
unavailable": it warns and pads). lorakit by default (training.shared_prefix) lays the 4 pairs out as one flat row
without pads, each pair's common prefix (system prompt, question, template) computed once
(data/shared_prefix.py); the row "lorakit, shared_prefix off" pads like TRL, which measures that lever. Each tool
shuffles the pairs with its own generator, so the measured steps hold different pairs: the table gives the real
tokens, padded positions and positions computed per step (TRL's counted in trl_dpo_peer.py, lorakit's from
lorakit's own data order on the same config and seed). tokens/s counts real (non-pad) tokens of chosen and
rejected rows, prompt and answer, in every row, also where lorakit computes the shared prompt once.

Settings: `8gb-qlora`: an 8 GB card emulated by capping PyTorch's allocator at --cap-gib (8 GiB minus the CUDA
context; bench/lib/capped_run.py); TRL with gradient checkpointing on every layer (its DPOConfig default),
lorakit with gradient_checkpointing=auto (its planner checkpoints the layers it needs for the cap). `gpu-qlora`:
the whole GPU; TRL without checkpointing (faster, and it fits), lorakit with auto. If TRL runs out of memory at
micro-batch 4, the row is re-run at 2 x 4, then 1 x 8 (what a TRL user would do): the table names its micro-batch.
Each row is a fresh process, both with lorakit's allocator settings (expandable segments). Reported per row:
median tokens/s over the measured steps (lorakit's own metrics.jsonl, TRL's timed in trl_dpo_peer.py), PyTorch's
peak allocated and reserved, nvidia-smi's peak memory.used (CUDA context included), TRL's attention and kernels.

At no higher peak (issue 24): `--tools ...,lorakit-at-peer-peak` (after trl) adds, for the capped setting only, lorakit
run again with the allocator capped at the TRL row's PyTorch peak reserved of that setting in this run (rows.jsonl;
bench/lib/peer_peak.py), so its planner plans for TRL's own footprint; the label gives the cap and its source. No
TRL row, or a failed one: the row is skipped, with the reason. --smoke runs it uncapped (CPU) and says so.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from lib.capped_run import eight_gb_cap_gib  # noqa: E402
from lib.peer_peak import PEER_PEAK_TOOL, PeerPeakCap, peer_cap_or_skip  # noqa: E402
from lib.phi4_mini_run import TOKENIZER, save_random_phi3  # noqa: E402
from lib.step_speed import run_speed  # noqa: E402
from lib.synthetic_chat import _text  # noqa: E402
from peer_speed import _run, measured_gpu  # noqa: E402

# (max_length per side, prompt tokens at most, question words, answers' median words): answers <= 512 tokens
LENGTHS, SMOKE_LENGTHS = (1024, 512, (90, 380), 245), (256, 160, (5, 30), 40)
PAIRS, SMOKE_PAIRS = 512, 64
MICRO_BATCH, ACCUMULATION = 4, 2  # 8 pairs per optimizer step
# name: (cap the allocator, TRL checkpointing)
SETTINGS = {"8gb-qlora": (True, True), "gpu-qlora": (False, False)}
TRL = "TRL DPOTrainer best practice"
# --tools names: lorakit as configured (shared prefixes), and lorakit with training.shared_prefix=false (the lever)
LORAKIT_TOOLS = {"lorakit": ("lorakit", True), "lorakit-unshared": ("lorakit, shared_prefix off", False)}


def synthetic_pairs(tokenizer, system_prompt: str, count: int, seed: int, smoke: bool = False) -> list[dict]:
    """`count` conversational pairs whose prompt and each answer fit their limits (rendered by the tokenizer's
    chat template, as both tools render them); chosen and rejected answers drawn independently. --smoke: short
    ones (a CPU checks the script, not the speed)."""
    max_length, prompt_max, question_words, answer_median = SMOKE_LENGTHS if smoke else LENGTHS
    rng = random.Random(seed)
    pairs = []
    while len(pairs) < count:
        prompt = [{"role": "system", "content": system_prompt},
                  {"role": "user", "content": _text(rng, rng.randint(*question_words)).rstrip(".") + "?"}]
        answers = [_text(rng, max(5, int(rng.lognormvariate(math.log(answer_median), 0.45)))) for _ in range(2)]
        prompt_length = len(tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True,
                                                          return_dict=True)["input_ids"])
        sides = [len(tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": answer}],
                                                   tokenize=True, return_dict=True)["input_ids"]) for answer in answers]
        if prompt_length <= prompt_max and max(sides) - prompt_length <= max_length - prompt_max:
            pairs.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": answers[0]}],
                          "rejected": [{"role": "assistant", "content": answers[1]}],
                          "lengths": [prompt_length, *sides]})
    return pairs


def prepare(work: Path, smoke: bool) -> dict:
    """Model, tokenizer and the pairs file, in this (child) process."""
    import torch
    from transformers import AutoTokenizer

    from lorakit.config import DEFAULT_SYSTEM_PROMPT

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    save_random_phi3(work / "model", tokenizer, smoke)
    pairs = synthetic_pairs(tokenizer, DEFAULT_SYSTEM_PROMPT, SMOKE_PAIRS if smoke else PAIRS, seed=0, smoke=smoke)
    with open(work / "pairs.jsonl", "w") as handle:
        for pair in pairs:
            handle.write(json.dumps({k: v for k, v in pair.items() if k != "lengths"}) + "\n")
    prompts = [p["lengths"][0] for p in pairs]
    answers = [side - p["lengths"][0] for p in pairs for side in p["lengths"][1:]]
    return {"pairs": len(pairs), "mean_prompt_tokens": statistics.mean(prompts), "max_prompt_tokens": max(prompts),
            "mean_answer_tokens": statistics.mean(answers), "max_answer_tokens": max(answers),
            "mean_real_tokens_per_pair": statistics.mean(sum(p["lengths"][1:]) for p in pairs),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", "torch": torch.__version__}


def lorakit_config(work: Path, steps: int, smoke: bool) -> Path:
    config = {
        "seed": 0,
        "output_dir": str(work / "run"),
        "model": {"name": str(work / "model"), "max_length": (SMOKE_LENGTHS if smoke else LENGTHS)[0]},
        "training": {"method": "dpo", "beta": 0.1, "precision": "fp32" if smoke else "bf16", "packing": False,
                     "batch_size": MICRO_BATCH, "gradient_accumulation_steps": ACCUMULATION, "max_steps": steps,
                     "logging_steps": 1, "eval_steps": steps, "save_steps": steps, "lr_scheduler": "constant",
                     "learning_rate": 1e-5},
        "data": {"train_file": str(work / "pairs.jsonl"), "validation_split": 0.0, "test_split": 0.0},
    }
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def lorakit_step_counts(config: Path, warmup: int, steps: int, shared: bool = True) -> dict:
    """Real tokens, answer tokens, padded positions and positions computed (`shared`: each pair's |P|+|C|+|R|;
    else the padded positions) of each measured step of the `lorakit train` run of `config`, from lorakit's own
    data preparation and data order (epoch_groups) with the run's seed, and the mean real tokens of a pair (both
    sides) over the whole file, to set beside TRL's tokenization of the same file."""
    from transformers import AutoTokenizer

    from lorakit.config import load_config
    from lorakit.training.batches import epoch_groups
    from lorakit.training.dataset import prepare_data

    run = load_config(config, [])
    examples = prepare_data(run, AutoTokenizer.from_pretrained(run.model.name)).splits.train
    groups = epoch_groups(examples, MICRO_BATCH, run.seed, 0)
    counts: dict = {"step_tokens": [], "step_labelled": [], "step_padded": [], "step_computed": [],
                    "mean_tokens_per_pair": statistics.mean(pair.tokens for pair in examples)}
    for step in range(warmup, warmup + steps):
        micro = [[examples[i] for i in group] for group in groups[step * ACCUMULATION:(step + 1) * ACCUMULATION]]
        rows = [[row for pair in group for row in (pair.chosen, pair.rejected)] for group in micro]
        counts["step_tokens"].append(sum(len(row.input_ids) for group in rows for row in group))
        counts["step_labelled"].append(sum(label != -100 for group in rows for row in group for label in row.labels))
        counts["step_padded"].append(sum(len(group) * max(len(row.input_ids) for row in group) for group in rows))
        counts["step_computed"].append(sum(pair.shared_positions for group in micro for pair in group) if shared
                                       else counts["step_padded"][-1])
    return counts


def lorakit_row(setting: str, work: Path, config: Path, args, log, tool: str = "lorakit",
                peer_cap: PeerPeakCap | None = None) -> dict:
    """`peer_cap`: the row lorakit-at-peer-peak (shared prefixes, allocator capped at TRL's measured peak)."""
    capped, _ = SETTINGS[setting]
    name, shared = (peer_cap.label, True) if peer_cap else LORAKIT_TOOLS[tool]
    cap_gib = peer_cap.cap_gib if peer_cap else args.cap_gib
    run_dir, peak_file = work / f"{tool}-{setting}", work / f"peak-{tool}-{setting}.json"
    sets = [f"output_dir={run_dir}", f"model.quantization={'none' if args.smoke else 'nf4'}",
            "training.gradient_checkpointing=auto", f"training.shared_prefix={str(shared).lower()}"]
    command = [sys.executable, str(REPO / "bench" / "lib" / "capped_run.py"), "--peak-file", str(peak_file)]
    if capped and not args.smoke and cap_gib is not None:
        command += ["--cap-gib", str(cap_gib)]
    command += ["-m", "lorakit", "train", str(config), "--overwrite"]
    for item in sets:
        command += ["--set", item]
    done, smi = _run(command, log, f"{name} {setting}", args.row_timeout)
    row = {"setting": setting, "tool": name, "nvidia_smi_peak_mib": smi.get(measured_gpu()),
           "micro_batch": MICRO_BATCH, "accumulation": ACCUMULATION}
    if done is None or done.returncode != 0:
        return row | {"error": "timeout" if done is None else done.stderr[-600:]}
    speed = run_speed(run_dir, args.warmup)
    plan = next((line for line in done.stdout.splitlines() + done.stderr.splitlines() if "memory plan" in line), "")
    row |= {"tokens_per_second": speed["tokens_per_second"], "measured_steps": speed["measured_steps"],
            "plan": plan.strip()[-160:], "losses": speed["train_losses"],
            **lorakit_step_counts(config, args.warmup, args.steps, shared)}
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    row["reward_margins"] = [r["rewards_margin"] for r in records if "rewards_margin" in r]
    if peak_file.exists():
        row |= json.loads(peak_file.read_text())
    return row


def trl_row(setting: str, work: Path, args, log) -> dict:
    """TRL at micro-batch 4 x 2; on out-of-memory again at 2 x 4, then 1 x 8 (the same 8 pairs per step)."""
    capped, checkpointing = SETTINGS[setting]
    micro = MICRO_BATCH
    while True:
        out = work / f"trl-{setting}-{micro}.json"
        command = [sys.executable, str(REPO / "bench" / "lib" / "trl_dpo_peer.py"), "--model", str(work / "model"),
                   "--data", str(work / "pairs.jsonl"), "--out", str(out), "--max-length", str((SMOKE_LENGTHS if args.smoke else LENGTHS)[0]),
                   "--micro-batch", str(micro), "--accumulation", str(MICRO_BATCH * ACCUMULATION // micro),
                   "--steps", str(args.steps), "--warmup", str(args.warmup),
                   "--checkpointing" if checkpointing else "--no-checkpointing"]
        if capped and not args.smoke:
            command += ["--cap-gib", str(args.cap_gib)]
        if args.smoke:
            command += ["--smoke", "--quantization", "none"]
        done, smi = _run(command, log, f"trl {setting} micro-batch {micro}", args.row_timeout)
        row = {"setting": setting, "tool": TRL, "nvidia_smi_peak_mib": smi.get(measured_gpu())}
        if done is not None and done.returncode == 0 and out.exists():
            measured = json.loads(out.read_text())  # TRL computes every padded position (no padding-free DPO)
            return row | measured | {"step_computed": measured.get("step_padded")}
        out_of_memory = done is not None and "out of memory" in done.stderr.lower()
        if not out_of_memory or micro == 1:
            return row | {"micro_batch": micro, "error": "timeout" if done is None else done.stderr[-600:]}
        micro //= 2


def table(rows: list[dict]) -> str:
    gib = lambda value: "-" if value is None else f"{value / 2**30:.2f}"  # noqa: E731
    lines = ["| setting | tool | tokens/s | lorakit / TRL | pairs per step (micro x accum) | real tokens per pair (file) | "
             "real tokens per step | "
             "padded positions per step | positions computed per step | PyTorch peak GiB alloc (reserved) | "
             "nvidia-smi peak GiB | how |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        batch = f"{row.get('micro_batch', '?')} x {row.get('accumulation', '?')}"
        if "error" in row or "skipped" in row:
            why = f"{row['error'][-150:]!r}" if "error" in row else row["skipped"]
            lines.append(f"| {row['setting']} | {row['tool']} | {'failed' if 'error' in row else 'skipped'} | | "
                         f"{batch if 'error' in row else ''} | | | | | | | {why} |")
            continue
        peer = next((r for r in rows if r["setting"] == row["setting"] and r["tool"] == TRL and "error" not in r), None)
        ratio = (f"**{row['tokens_per_second'] / peer['tokens_per_second']:.2f}x**"
                 if peer and row["tool"] != TRL else "-")
        smi = "-" if row.get("nvidia_smi_peak_mib") is None else f"{row['nvidia_smi_peak_mib'] / 1024:.2f}"
        how = row.get("plan") or (f"{row.get('attention')}, liger layer kernels {row.get('liger_kernel')}, "
                                  f"checkpointing {row.get('checkpointing')}, padding_free {row.get('padding_free')}")
        lines.append(f"| {row['setting']} | {row['tool']} | {row['tokens_per_second']:,.0f} | {ratio} | {batch} | "
                     f"{row.get('mean_tokens_per_pair', 0):,.1f} | {statistics.mean(row['step_tokens']):,.0f} | {statistics.mean(row['step_padded']):,.0f} | "
                     f"{statistics.mean(row['step_computed']) if row.get('step_computed') else 0:,.0f} | "
                     f"{gib(row.get('peak_allocated'))} ({gib(row.get('peak_reserved'))}) | {smi} | {how} |")
    return "\n".join(lines)


def main() -> None:
    began = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--work", type=Path, default=Path("/tmp/lorakit-preference-speed"))
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--tools", default="trl,lorakit,lorakit-unshared",
                        help="trl, lorakit (shared prefixes), lorakit-unshared (training.shared_prefix=false) and "
                        f"{PEER_PEAK_TOOL} (capped settings only: lorakit with the allocator capped at the TRL row's "
                        "peak_reserved of the setting, measured earlier in this run; list it after trl)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--cap-gib", type=float, default=eight_gb_cap_gib(), help="allocator cap of the 8 GB card")
    parser.add_argument("--row-timeout", type=int, default=240)
    parser.add_argument("--budget-seconds", type=float, default=None, help="start no row later than this many "
                        "seconds less 90 after the start, preparation included (a device call's limit: the table is "
                        "still written)")
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU: checks the script only")
    parser.add_argument("--prepare-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare_child:
        (args.work / "data.json").write_text(json.dumps(prepare(args.work, args.smoke)))
        return
    if args.out is None:
        parser.error("--out is required (a folder for the table and logs)")
    if not (args.work / "data.json").exists():  # keep a prepared work folder between calls
        shutil.rmtree(args.work, ignore_errors=True)
        args.work.mkdir(parents=True)
        prepare_command = [sys.executable, str(Path(__file__).resolve()), "--prepare-child", "--work", str(args.work)]
        subprocess.run(prepare_command + (["--smoke"] if args.smoke else []), check=True)
    config = lorakit_config(args.work, args.warmup + args.steps, args.smoke)
    data = json.loads((args.work / "data.json").read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    print(json.dumps(data), flush=True)
    rows_path = args.out / "rows.jsonl"
    with open(args.out / "log.txt", "a") as log:
        for setting in args.settings.split(","):
            for tool in args.tools.split(","):
                started = time.perf_counter()
                peer_cap = None
                if tool == PEER_PEAK_TOOL:
                    peer_cap = peer_cap_or_skip(rows_path, setting, SETTINGS[setting][0], TRL, args.smoke)
                    if peer_cap is None:
                        continue
                if args.budget_seconds is not None and started - began > args.budget_seconds - 90:
                    label = peer_cap.label if peer_cap else TRL if tool == "trl" else LORAKIT_TOOLS[tool][0]
                    row = {"setting": setting, "tool": label,
                           "error": f"not run: {started - began:.0f} s of the {args.budget_seconds:.0f} s budget used"}
                    print(json.dumps(row), flush=True)
                    with open(rows_path, "a") as handle:
                        handle.write(json.dumps(row) + "\n")
                    continue
                row = trl_row(setting, args.work, args, log) if tool == "trl" else lorakit_row(
                    setting, args.work, config, args, log, tool, peer_cap)
                row["wall_seconds"] = time.perf_counter() - started
                with open(rows_path, "a") as handle:
                    handle.write(json.dumps(row) + "\n")
                print(json.dumps({k: v for k, v in row.items() if k not in ("losses", "reward_margins")}), flush=True)
    every_row = [json.loads(line) for line in rows_path.read_text().splitlines()]
    (args.out / "env.json").write_text(json.dumps(data | {"cap_gib": args.cap_gib, "steps": args.steps,
                                                          "warmup": args.warmup, "max_length": (SMOKE_LENGTHS if args.smoke else LENGTHS)[0],
                                                          "pairs_per_step": MICRO_BATCH * ACCUMULATION}, indent=1))
    text = table(every_row)
    (args.out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
