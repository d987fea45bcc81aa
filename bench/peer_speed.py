"""Issue 11/23 benchmark: `lorakit train` (the CLI) against TRL's SFTTrainer as its documentation recommends
(bench/lib/trl_peer.py) and the guide's recipe (bench/lib/guide_recipe.py), same model, same data, same GPU, one run.

    python bench/peer_speed.py --out bench/results/peer_speed_honest [--settings 8gb-qlora-512,...] [--smoke]

Model: Phi-4-mini-shaped Phi3 with random weights (hidden 3072, intermediate 8192, 32 layers, 24 heads, 8 KV
heads, vocab 200,064, partial rotary 0.75, tied embeddings), bf16 safetensors. Data: 2,048 synthetic
single-turn chats (bench/lib/synthetic_chat.py) with lorakit's default system prompt; lorakit reads them as
instruction/response JSONL, TRL as conversational prompt/completion (loss on the answer only in both).

Equal work per step (issue 23): a setting's step is one padding-free packed row of `rows x max_length` tokens in
both tools: lorakit packs best-fit bins of micro-batch x max_length tokens; TRL packs best-fit (`bfd`) bins of
its max_length, so it gets one bin of rows x max_length per step (per_device_train_batch_size 1; no example is
longer than 512 tokens, so no example is truncated in either tool). Both flatten a step into one row, so TRL's
earlier 16 bins of 512 were the same row shape, only emptier (7,551 real tokens of 8,192). Real tokens,
labelled positions and squared example lengths per measured step are counted for both: TRL's in trl_peer.py,
lorakit's by lorakit's own packer (`packed_epoch_groups`) on the same config and seed.

Shared prefixes (training.shared_prefix, on by default): lorakit computes each example's common prefix with its
row's root example (the system prompt and template at least) once, so a step computes fewer positions than its
real tokens; the table's "positions computed per step" says how many (TRL computes every real token), and lorakit's
MFU counts the FLOPs on those positions and on the keys its attention gathers (bench/lib/flops.py). tokens/s counts
real tokens for both tools. `--extra training.shared_prefix=false` adds the lorakit row without it (the lever's
contribution).

At no higher peak (issue 23): `--tools trl,lorakit,lorakit-at-peer-peak` adds, for the capped (8 GB) settings only,
lorakit run again with the allocator capped at the TRL row's PyTorch peak reserved of the same setting in this run
(OUT's rows.jsonl; bench/lib/peer_peak.py), so its planner plans for TRL's own footprint; the label gives the cap
and its source. No TRL row, or a failed one: the row is skipped, with the reason. --smoke runs it uncapped (CPU).

Each row is a fresh process. An 8 GB card is emulated by capping PyTorch's allocator at --cap-gib (8 GiB minus
the CUDA context); lorakit's planner sees the capped allocator as that card (cap + context). Both tools run with
lorakit's allocator settings (expandable segments). Reported per row: median tokens/s over the measured steps
(real tokens; lorakit's own metrics.jsonl, TRL's counted in trl_peer.py), PyTorch's peak allocated and reserved,
nvidia-smi's peak memory.used (CUDA context included), and MFU three ways (bench/lib/flops.py): on the FLOPs each
tool performs (computed positions, the LM head where each tool runs it: labelled positions), on executed FLOPs
(recomputation included), and the old count with the LM head on every token.
"""

from __future__ import annotations

import argparse
import json
import os
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
from lib.gpu_runs import SAFE_ENV, GpuMemorySampler, matmul_tflops  # noqa: E402
from lib.peer_peak import PEER_PEAK_TOOL, PeerPeakCap, peer_cap_or_skip  # noqa: E402
from lib.peer_table import lorakit_step_counts, planned_checkpointed_layers, planned_micro_batch, table  # noqa: E402
from lib.phi4_mini_run import PHI4_MINI, SMOKE, TOKENIZER, save_random_phi3  # noqa: E402
from lib.step_speed import run_speed  # noqa: E402
from lib.synthetic_chat import synthetic_conversations  # noqa: E402

# name: (max_length, packed rows per step, quantization, checkpointing for TRL, cap the allocator)
SETTINGS = {
    "8gb-qlora-512": (512, 16, "nf4", True, True),
    "8gb-qlora-2048": (2048, 4, "nf4", True, True),
    "gpu-qlora-512": (512, 16, "nf4", False, False),
    "gpu-bf16-512": (512, 16, "none", False, False),
}


def prepare(work: Path, smoke: bool) -> dict:
    """Model, tokenizer, both data files and the matmul rate, in this (child) process."""
    import torch
    from transformers import AutoTokenizer

    from lorakit.config import DEFAULT_SYSTEM_PROMPT

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    save_random_phi3(work / "model", tokenizer, smoke)
    lengths = []
    with open(work / "lorakit.jsonl", "w") as ours, open(work / "trl.jsonl", "w") as theirs:
        for conversation in synthetic_conversations(256 if smoke else 2048, seed=0):
            user, assistant = (m.content for m in conversation.messages)
            messages = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": user},
                        {"role": "assistant", "content": assistant}]
            ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
            if len(ids) > 512:  # every example fits the shortest max_length: no truncation differences
                continue
            lengths.append(len(ids))
            ours.write(json.dumps({"instruction": user, "response": assistant}) + "\n")
            theirs.write(json.dumps({"prompt": messages[:2], "completion": messages[2:]}) + "\n")
    tflops = matmul_tflops() if torch.cuda.is_available() and not smoke else None
    return {"examples": len(lengths), "mean_length": statistics.mean(lengths),
            "mean_square_length": statistics.mean(n * n for n in lengths), "matmul_tflops": tflops,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "torch": torch.__version__}


def lorakit_config(work: Path, steps: int, smoke: bool) -> Path:
    config = {
        "seed": 0,
        "output_dir": str(work / "run"),
        "model": {"name": str(work / "model"), "max_length": 512},
        "training": {"precision": "fp32" if smoke else "bf16", "packing": True, "gradient_accumulation_steps": 1,
                     "max_steps": steps, "logging_steps": 1, "eval_steps": steps, "save_steps": steps,
                     "lr_scheduler": "constant", "learning_rate": 1e-4},
        "data": {"train_file": str(work / "lorakit.jsonl"), "validation_split": 0.0, "test_split": 0.0},
    }
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _run(command: list[str], log, name: str, timeout: int, extra_env: dict | None = None,
         ) -> tuple[subprocess.CompletedProcess | None, dict]:
    env = dict(os.environ, **SAFE_ENV, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               **(extra_env or {}))
    with GpuMemorySampler() as sampler:
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as timed_out:
            done = None
            log.write(f"== {name}: TIMEOUT after {timeout} s\n{(timed_out.stdout or b'')[-4000:]!r}\n")
    if done is not None:
        log.write(f"== {name}: {' '.join(command)}\n{done.stdout[-6000:]}\n{done.stderr[-6000:]}\n")
    log.flush()
    return done, sampler.peak


def lorakit_row(setting: str, work: Path, config: Path, args, log, disabled: str = "", extra: str = "",
                peer_cap: PeerPeakCap | None = None) -> dict:
    """`disabled`: optimisations switched off for this row (LORAKIT_DISABLE, '+'-joined), to measure each one.
    `extra`: '+'-joined `--set` items applied after the setting's own (a planner choice to compare).
    `peer_cap`: the row lorakit-at-peer-peak (the allocator capped at TRL's measured peak, not --cap-gib)."""
    max_length, rows, quantization, _, capped = SETTINGS[setting]
    cap_gib = peer_cap.cap_gib if peer_cap else args.cap_gib
    suffix = ((f"-without-{disabled}" if disabled else "") + (f"-{extra_slug(extra)}" if extra else "")
              + ("-at-peer-peak" if peer_cap else ""))
    run_dir, peak_file = work / f"lorakit-{setting}{suffix}", work / f"peak-{setting}{suffix}.json"
    quantization = "none" if args.smoke else quantization  # nf4 needs CUDA
    sets = [f"output_dir={run_dir}", f"model.max_length={max_length}", f"model.quantization={quantization}"]
    if capped:  # the planner chooses micro-batch, checkpointing and offload for the emulated card
        sets += ["training.batch_size=auto", "training.gradient_checkpointing=auto"]
    else:
        sets += [f"training.batch_size={rows}", "training.gradient_checkpointing=false"]
    sets += [item for item in extra.split("+") if item]
    command = [sys.executable, str(REPO / "bench" / "lib" / "capped_run.py"), "--peak-file", str(peak_file)]
    if capped and not args.smoke and cap_gib is not None:
        command += ["--cap-gib", str(cap_gib)]
    command += ["-m", "lorakit", "train", str(config), "--overwrite"]
    for item in sets:
        command += ["--set", item]
    tool = f"lorakit without {disabled.replace('+', ', ')}" if disabled else "lorakit"
    tool += f" with {extra.replace('+', ', ')}" if extra else ""
    tool = peer_cap.label if peer_cap else tool
    done, smi = _run(command, log, f"{tool} {setting}", args.row_timeout,
                     {"LORAKIT_DISABLE": disabled.replace("+", ",")} if disabled else None)
    row = {"setting": setting, "tool": tool, "nvidia_smi_peak_mib": smi.get(measured_gpu())}
    if done is None or done.returncode != 0:
        return row | {"error": "timeout" if done is None else done.stderr[-600:]}
    speed = run_speed(run_dir, args.warmup)
    plan = next((line for line in done.stdout.splitlines() + done.stderr.splitlines() if "memory plan" in line), "")
    from lorakit.training.session import SHARED_PACKING_MESSAGE

    micro_batch = planned_micro_batch(plan) or rows
    shared = SHARED_PACKING_MESSAGE in done.stdout + done.stderr  # the run said its rows share prefixes
    counts = lorakit_step_counts(config, max_length, micro_batch, args.warmup, args.steps, shared_prefix=shared)
    row |= {"tokens_per_second": speed["tokens_per_second"], "measured_steps": speed["measured_steps"],
            "plan": plan.strip()[-160:], "losses": speed["train_losses"], "shared_prefix": shared,
            "checkpointed_layers": planned_checkpointed_layers(plan) if capped else 0,
            "step_tokens": [c.tokens for c in counts], "step_labelled": [c.labelled for c in counts],
            "step_square_lengths": [c.square_lengths for c in counts], "step_positions": [c.computed for c in counts]}
    if peak_file.exists():
        row |= json.loads(peak_file.read_text())
    return row


def measured_gpu() -> int:
    """nvidia-smi's index of the GPU the rows run on: the first of CUDA_VISIBLE_DEVICES (two benchmarks can then
    share a two-GPU machine, one GPU each), else 0."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return int(visible) if visible.isdigit() else 0


def extra_slug(extra: str) -> str:
    """A folder-name form of an --extra row's settings.

    >>> extra_slug("training.batch_size=4+training.gradient_accumulation_steps=4")
    'batch_size4-gradient_accumulation_steps4'
    >>> extra_slug("training.learning_rate=0.0002")
    'learning_rate0.0002'
    """
    items = (item.partition("=") for item in extra.split("+") if item)
    return "-".join(key.rsplit(".", 1)[-1] + value for key, _, value in items)


def trl_row(setting: str, work: Path, args, log) -> dict:
    max_length, rows, quantization, checkpointing, capped = SETTINGS[setting]
    out = work / f"trl-{setting}.json"
    # one best-fit bin of rows x max_length tokens per step, as lorakit packs (see the module's docstring)
    command = [sys.executable, str(REPO / "bench" / "lib" / "trl_peer.py"), "--model", str(work / "model"),
               "--data", str(work / "trl.jsonl"), "--out", str(out), "--max-length", str(rows * max_length),
               "--rows", "1", "--quantization", quantization, "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--checkpointing" if checkpointing else "--no-checkpointing"]
    if capped and not args.smoke:
        command += ["--cap-gib", str(args.cap_gib)]
    if args.smoke:
        command.append("--smoke")
    done, smi = _run(command, log, f"trl {setting}", args.row_timeout)
    row = {"setting": setting, "tool": "TRL best practice", "nvidia_smi_peak_mib": smi.get(measured_gpu()),
           "checkpointed_layers": PHI4_MINI["num_hidden_layers"] if checkpointing else 0, "head_recomputed": True}
    if done is None or done.returncode != 0 or not out.exists():
        return row | {"error": "timeout" if done is None else done.stderr[-600:]}
    return row | json.loads(out.read_text())


def guide_row(work: Path, args, log) -> dict:
    out = work / "guide.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--guide-child", str(out), "--work", str(work)]
    done, smi = _run(command, log, "guide", args.row_timeout)
    row = {"setting": "gpu-qlora-512", "tool": "guide recipe", "nvidia_smi_peak_mib": smi.get(measured_gpu())}
    if done is None or done.returncode != 0 or not out.exists():
        return row | {"error": "timeout" if done is None else done.stderr[-600:]}
    return row | json.loads(out.read_text())


def guide_child(out: Path, work: Path) -> None:
    from transformers import AutoTokenizer

    from lib.guide_recipe import run_guide_recipe
    from lorakit.config import DEFAULT_SYSTEM_PROMPT
    from lorakit.data.conversation import Conversation, Message
    from lorakit.data.render import render_conversation

    tokenizer = AutoTokenizer.from_pretrained(work / "model")
    examples = []
    for index, line in enumerate((work / "lorakit.jsonl").read_text().splitlines()[:400]):
        item = json.loads(line)
        conversation = Conversation((Message("user", item["instruction"]), Message("assistant", item["response"])),
                                    source="bench", line=index + 1)
        examples.append(render_conversation(conversation, tokenizer, DEFAULT_SYSTEM_PROMPT, 512))
    result = run_guide_recipe(str(work / "model"), tokenizer, examples, measured_steps=4, warmup_steps=1)
    tokens = sum(result["lengths"])
    out.write_text(json.dumps({"tokens_per_second": tokens / result["seconds"], "measured_steps": result["steps"],
                               "peak_allocated": result["peak_allocated"], "peak_reserved": result["peak_reserved"]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--work", type=Path, default=Path("/tmp/lorakit-peer-speed"))
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--tools", default="trl,lorakit", help=f"comma list of trl, lorakit, guide, {PEER_PEAK_TOOL} "
                        "(capped settings only: lorakit with the allocator capped at the TRL row's peak_reserved of "
                        "the setting, measured earlier in this run; needs trl in the run or in OUT's rows.jsonl)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--cap-gib", type=float, default=eight_gb_cap_gib(),
                        help="allocator cap of the emulated 8 GB card")
    parser.add_argument("--row-timeout", type=int, default=300)
    parser.add_argument("--ablate", default="", help="extra lorakit rows, each with these optimisations off "
                        "(comma list of LORAKIT_DISABLE values, '+' joins several: fused_lora+split_qkv,host_overlap)")
    parser.add_argument("--extra", default="", help="extra lorakit rows, each with these --set items after the "
                        "setting's own (comma list, '+' joins several: training.batch_size=4+training.gradient_"
                        "accumulation_steps=4)")
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU: checks the script only")
    parser.add_argument("--prepare-only", action="store_true", help="make the work folder's model, data and "
                        "lorakit config (kept between calls), print the config's path, run nothing")
    parser.add_argument("--prepare-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--guide-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.out is None and not (args.prepare_only or args.prepare_child or args.guide_child):
        parser.error("--out is required (a folder for the table and logs), unless --prepare-only")
    if args.prepare_child:
        (args.work / "data.json").write_text(json.dumps(prepare(args.work, args.smoke)))
        return
    if args.guide_child:
        guide_child(args.guide_child, args.work)
        return
    if not (args.work / "data.json").exists():  # keep a prepared work folder between calls
        shutil.rmtree(args.work, ignore_errors=True)
        args.work.mkdir(parents=True)
        prepare_command = [sys.executable, str(Path(__file__).resolve()), "--prepare-child", "--work", str(args.work)]
        subprocess.run(prepare_command + (["--smoke"] if args.smoke else []), check=True)
    config = lorakit_config(args.work, args.warmup + args.steps, args.smoke)
    if args.prepare_only:
        print(config)
        return
    data = json.loads((args.work / "data.json").read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    print(json.dumps(data), flush=True)
    tools = args.tools.split(",")
    rows_path = args.out / "rows.jsonl"
    # (optimisations switched off, extra --set items) of each lorakit row
    lorakit_variants = ([("", "")] + [(v, "") for v in args.ablate.split(",") if v]
                        + [("", v) for v in args.extra.split(",") if v])
    with open(args.out / "log.txt", "a") as log:
        for setting in args.settings.split(","):
            for tool in ("trl", "lorakit", PEER_PEAK_TOOL):
                if tool not in tools:
                    continue
                peer_cap = None
                if tool == PEER_PEAK_TOOL:
                    peer_cap = peer_cap_or_skip(rows_path, setting, SETTINGS[setting][4], "TRL best practice", args.smoke)
                    if peer_cap is None:
                        continue
                for disabled, extra in lorakit_variants if tool == "lorakit" else [("", "")]:
                    started = time.perf_counter()
                    row = trl_row(setting, args.work, args, log) if tool == "trl" else lorakit_row(
                        setting, args.work, config, args, log, disabled, extra, peer_cap)
                    row["wall_seconds"] = time.perf_counter() - started
                    with open(rows_path, "a") as handle:
                        handle.write(json.dumps(row) + "\n")
                    print(json.dumps({k: v for k, v in row.items() if k != "losses"}), flush=True)
        if "guide" in tools:  # last: the slowest row, and the one earlier runs already measured
            row = guide_row(args.work, args, log)
            with open(rows_path, "a") as handle:
                handle.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    every_row = [json.loads(line) for line in rows_path.read_text().splitlines()]
    (args.out / "env.json").write_text(json.dumps(data | {"cap_gib": args.cap_gib, "steps": args.steps,
                                                          "warmup": args.warmup}, indent=1))
    text = table(every_row, data, SMOKE if args.smoke else PHI4_MINI)
    (args.out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
