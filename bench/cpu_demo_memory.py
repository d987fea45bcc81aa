"""Issue 9, point 7: peak memory and speed of the README's CPU demo, this code against a baseline commit, in
one run.

    python bench/cpu_demo_memory.py [--baseline bc11f75] [--steps 4] [--rounds 1] [--out bench/results/cpu_demo_memory.txt]

Each measurement is a fresh process under `/usr/bin/time -v` that trains examples/config.yaml (the README demo:
the embedded SmolLM2-135M-Instruct, batch 8, max_length 384, fp32 on CPU) for `--steps` optimizer steps
through the public `lorakit.training.loop.train` (training only: the demo's closing answer is left out), with
`lorakit` imported from this checkout's src/ or from a `git worktree` of the baseline commit. Peak RSS is
time's "Maximum resident set size"; s/step is the mean time between the progress reports of steps 2..N
(step 1 carries one-time costs), in wall-clock seconds and in the process's CPU seconds (user + system, all
threads): on a machine shared with other jobs, wall time per step moves with their load, CPU time per step
much less, so the speed ratio is read from CPU time. Baseline and current runs alternate, `--rounds` times.
Prints a table with ratios (current / baseline).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "examples" / "config.yaml"


def child(config_path: str, steps: int, output_dir: str) -> None:
    """Train the demo config for `steps` steps; print step times and logged losses as one JSON line."""
    from lorakit.config import load_config
    from lorakit.training.loop import train
    from lorakit.training.metrics import SilentReporter

    class Timing(SilentReporter):
        def __init__(self):
            self.times, self.cpu_times, self.losses, self.messages = [], [], [], []

        def start(self, total_steps, first_step):
            self.times.append(time.perf_counter())
            self.cpu_times.append(time.process_time())

        def step(self, step, metrics):
            self.times.append(time.perf_counter())
            self.cpu_times.append(time.process_time())
            if "train_loss" in metrics:
                self.losses.append((step, metrics["train_loss"]))

        def message(self, text):
            self.messages.append(text)

    # train_file is relative to the repository root in the demo config.
    os.chdir(REPO)
    config = load_config(config_path, [f"training.max_steps={steps}", "training.logging_steps=1",
                                       f"training.eval_steps={steps}", f"training.save_steps={steps}",
                                       f"output_dir={output_dir}", "mode=train"])
    reporter = Timing()
    train(config, overwrite=True, reporter=reporter)
    print("RESULT " + json.dumps({"times": reporter.times, "cpu_times": reporter.cpu_times, "losses": reporter.losses,
                                  "messages": reporter.messages}))


def measure(label: str, src: Path, steps: int, work: Path) -> dict:
    environment = dict(os.environ, PYTHONPATH=str(src), TOKENIZERS_PARALLELISM="false")
    command = ["/usr/bin/time", "-v", sys.executable, __file__, "--child", str(CONFIG), str(steps), str(work / label)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=environment)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{label} failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    result = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])
    rss_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    times = result["times"]
    per_step = [b - a for a, b in zip(times[1:], times[2:])]  # steps 2..N
    cpu = result["cpu_times"]
    cpu_per_step = [b - a for a, b in zip(cpu[1:], cpu[2:])]
    return {"label": label, "peak_rss_gib": rss_kib / 2**20, "s_per_step": statistics.mean(per_step),
            "cpu_s_per_step": statistics.mean(cpu_per_step), "cpu_step_seconds": [round(t, 2) for t in cpu_per_step],
            "step_seconds": [round(t, 2) for t in per_step], "first_step_s": times[1] - times[0], "wall_s": wall,
            "losses": result["losses"], "messages": [m for m in result["messages"] if m.startswith("on CPU")]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--baseline", default="bc11f75")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "cpu_demo_memory.txt")
    parser.add_argument("--child", nargs=3, metavar=("CONFIG", "STEPS", "OUTPUT_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.child[2])
        return
    work = Path(tempfile.mkdtemp(prefix="cpu-demo-"))
    baseline_tree = work / "baseline"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(baseline_tree), args.baseline],
                   check=True, capture_output=True)
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    rows = []
    try:
        for round_index in range(args.rounds):
            for label, src in ((f"baseline {args.baseline}", baseline_tree / "src"), (f"current {head}+tree", REPO / "src")):
                row = measure(label, src, args.steps, work)
                row["round"] = round_index + 1
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(baseline_tree)], capture_output=True)
    base = [r for r in rows if r["label"].startswith("baseline")]
    current = [r for r in rows if r["label"].startswith("current")]
    lines = [f"README CPU demo (examples/config.yaml: SmolLM2-135M-Instruct, batch 8, max_length 384, fp32), "
             f"{args.steps} steps, {args.rounds} round(s), {os.cpu_count()} CPUs, load average before: "
             f"{os.getloadavg()[0]:.1f}",
             "command: python bench/cpu_demo_memory.py " + " ".join(sys.argv[1:]), "",
             "| run | round | peak RSS GiB | CPU s/step (steps 2..N) | wall s/step | wall step times s | first step s (wall) | logged train loss |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        losses = ", ".join(f"{step}: {loss:.4f}" for step, loss in r["losses"])
        lines.append(f"| {r['label']} | {r['round']} | {r['peak_rss_gib']:.2f} | {r['cpu_s_per_step']:.2f} | {r['s_per_step']:.2f} | "
                     f"{r['step_seconds']} | {r['first_step_s']:.1f} | {losses} |")
    rss_ratio = statistics.mean(r["peak_rss_gib"] for r in current) / statistics.mean(r["peak_rss_gib"] for r in base)
    speed_ratio = statistics.mean(r["cpu_s_per_step"] for r in current) / statistics.mean(r["cpu_s_per_step"] for r in base)
    wall_ratio = statistics.mean(r["s_per_step"] for r in current) / statistics.mean(r["s_per_step"] for r in base)
    lines += ["", f"peak RSS: baseline {statistics.mean(r['peak_rss_gib'] for r in base):.2f} GiB -> current "
              f"{statistics.mean(r['peak_rss_gib'] for r in current):.2f} GiB (x{rss_ratio:.2f})",
              f"CPU s/step: baseline {statistics.mean(r['cpu_s_per_step'] for r in base):.2f} -> current "
              f"{statistics.mean(r['cpu_s_per_step'] for r in current):.2f} (x{speed_ratio:.2f}; below 1 is faster)",
              f"wall s/step: baseline {statistics.mean(r['s_per_step'] for r in base):.2f} -> current "
              f"{statistics.mean(r['s_per_step'] for r in current):.2f} (x{wall_ratio:.2f}; moves with the machine's load)"]
    if current and current[0]["messages"]:
        lines.append("current run said: " + current[0]["messages"][0])
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
