"""Issue 11, generation speed: one-at-a-time `generate` (the eval path up to bc11f75) vs batched generation.

    python bench/generation_speed.py --device cpu  --run RUN_DIR --per-category 2 --out bench/results/generation_speed_cpu.txt
    python bench/generation_speed.py --device cuda --out bench/results/generation_speed_gpu.txt

Without --run, the README demo (examples/config.yaml) is trained for 3 steps with `lorakit train` into a
temporary folder first. Every row answers the same safety probes with both models (base = adapter off,
tuned), greedy, eval.max_new_tokens new tokens at most, in the same process:
- one at a time: `generate_answer` per probe and model, i.e. transformers' `generate` on one sequence, as
  `lorakit eval` did up to commit bc11f75 (its _answer called generate_answer for each probe, base then tuned);
- batched, one model per batch: `generate_answers(..., mixed_batches=False)`, the adapter switched off for
  the base model's batches;
- batched, base+tuned in one batch: `generate_answers(..., mixed_batches=True)` (peft's adapter_names).
Columns: new tokens generated, seconds, tokens/s, ratio of tokens/s to the one-at-a-time row, and how many
answers are token-identical to the one-at-a-time answers (greedy decoding: they should all be).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--run", type=Path, help="a trained run folder (default: train the README demo for 3 steps)")
    parser.add_argument("--per-category", type=int, default=None, help="probes per category (default: all 84)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the run's eval.max_new_tokens")
    parser.add_argument("--batch-sizes", default="32", help="comma-separated batch sizes for the batched rows")
    parser.add_argument("--out", type=Path, help="also write the table here")
    return parser.parse_args()


def train_demo(folder: Path) -> Path:
    run = folder / "demo-run"
    command = [sys.executable, "-m", "lorakit", "train", "examples/config.yaml", "--set", "training.max_steps=3",
               "--set", f"output_dir={run}", "--set", "mode=train"]
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return run


def one_at_a_time(run, conversations, settings):
    from lorakit.inference.generate import generate_answer

    answers = []
    for which in ("base", "tuned"):
        with run.model.disable_adapter() if which == "base" else nullcontext():
            answers += [tuple(generate_answer(run, c, settings)[1]) for c in conversations]
    return answers


def batched(run, conversations, settings, batch_size: int, mixed: bool):
    from lorakit.inference.generate import generate_answers

    models = ["base"] * len(conversations) + ["tuned"] * len(conversations)
    answers = generate_answers(run, conversations * 2, settings, models=models, batch_size=batch_size,
                               mixed_batches=mixed)
    return [a.token_ids for a in answers]


def timed(fn, device):
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    result = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - started


def main() -> int:
    args = parse_args()
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # lorakit picks CUDA whenever it sees one
    import torch

    from lorakit.data.records import Message
    from lorakit.evaluation import safety
    from lorakit.inference.generate import GenerationSettings, load_run

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device visible")
    with tempfile.TemporaryDirectory() as scratch:
        run_dir = args.run or train_demo(Path(scratch))
        run = load_run(run_dir)
        assert run.device.type == args.device, (run.device, args.device)
        probes = safety.select_probes(safety.load_probes(run.config.eval.probe_files), args.per_category)
        conversations = [(Message("user", p.prompt),) for p in probes]
        settings = GenerationSettings(max_new_tokens=args.max_new_tokens or run.config.eval.max_new_tokens,
                                      temperature=0.0, top_p=run.config.inference.top_p,
                                      repetition_penalty=run.config.inference.repetition_penalty)
        batched(run, conversations[:2], GenerationSettings(max_new_tokens=2), 2, True)  # warm-up (kernels, caches)

        rows = []
        reference, seconds = timed(lambda: one_at_a_time(run, conversations, settings), args.device)
        rows.append(("one at a time (generate, bc11f75's eval path)", reference, seconds))
        for size in [int(s) for s in args.batch_sizes.split(",")]:
            for mixed, label in ((False, "one model per batch"), (True, "base+tuned in one batch")):
                answers, seconds = timed(lambda size=size, mixed=mixed: batched(run, conversations, settings, size, mixed), args.device)
                rows.append((f"batched {size}, {label}", answers, seconds))

    lines = [f"# bench/generation_speed.py {' '.join(sys.argv[1:])}",
             f"# device {args.device} ({torch.cuda.get_device_name() if args.device == 'cuda' else platform.processor() or 'cpu'}), "
             f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, load average {os.getloadavg()[0]:.1f} at the end",
             f"# {len(probes)} safety probes x 2 models (base, tuned), greedy, max_new_tokens {settings.max_new_tokens}, "
             f"repetition_penalty {settings.repetition_penalty}, model {run.config.model.name}",
             "",
             f"| {'generation':<46} | answers | new tokens | seconds | tokens/s | vs one at a time | identical answers |",
             f"|{'-' * 48}|---------|------------|---------|----------|------------------|-------------------|"]
    base_rate = sum(len(a) for a in reference) / rows[0][2]
    for label, answers, seconds in rows:
        tokens = sum(len(a) for a in answers)
        same = sum(a == b for a, b in zip(answers, reference))
        lines.append(f"| {label:<46} | {len(answers):>7} | {tokens:>10} | {seconds:>7.1f} | {tokens / seconds:>8.1f} "
                     f"| {tokens / seconds / base_rate:>15.2f}x | {same:>8} of {len(reference):<6} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
