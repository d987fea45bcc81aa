"""Issue 9, point 7: peak memory and speed of the README's CPU demo, this code against a baseline commit, in
one run.

    python bench/cpu_demo_memory.py [--baseline bc11f75] [--steps 4] [--rounds 1] [--out bench/results/cpu_demo_memory.txt]
    python bench/cpu_demo_memory.py --whole [--fresh-cache] [--baseline COMMIT] [--out ...]

Each measurement is a fresh process under `/usr/bin/time -v` that trains examples/config.yaml (the README demo:
the embedded SmolLM2-135M-Instruct, batch 8, max_length 384, fp32 on CPU) for `--steps` optimizer steps
through the public `lorakit.training.loop.train` (training only: the demo's closing answer is left out), with
`lorakit` imported from this checkout's src/ or from a `git worktree` of the baseline commit. Peak RSS is
time's "Maximum resident set size"; s/step is the mean time between the progress reports of steps 2..N
(step 1 carries one-time costs), in wall-clock seconds and in the process's CPU seconds (user + system, all
threads): on a machine shared with other jobs, wall time per step moves with their load, CPU time per step
much less, so the speed ratio is read from CPU time. Baseline and current runs alternate, `--rounds` times.
Prints a table with ratios (current / baseline).

With --whole, each measurement is the README's whole command instead, `lorakit train examples/config.yaml
--overwrite` (20 steps, test loss, then `mode: both`'s answer), as `python -m lorakit` under `/usr/bin/time -v`
with its output_dir in a temporary folder; --fresh-cache gives each run an empty LORAKIT_CACHE_DIR, so it
first converts the embedded GGUF, as in a fresh clone. Besides time's peak, the resident set of the process
is sampled every 0.2 s and its maximum reported per phase: loading (model conversion included) until the
CPU pieces message that precedes the first step, training (up to "done:", test loss included), and the
answer after it.
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
import threading
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


def _resident_gib(time_pid: int) -> float:
    """The resident set of the process that /usr/bin/time runs (its one child), 0 before it starts."""
    try:
        children = Path(f"/proc/{time_pid}/task/{time_pid}/children").read_text().split()
        status = Path(f"/proc/{children[0]}/status").read_text() if children else ""
    except OSError:
        return 0.0
    return next((int(line.split()[1]) / 2**20 for line in status.splitlines() if line.startswith("VmRSS")), 0.0)


def measure_whole(label: str, src: Path, work: Path, fresh_cache: bool) -> dict:
    """The README command, start to answer; peak RSS from time -v, and sampled per phase."""
    environment = dict(os.environ, PYTHONPATH=str(src), COLUMNS="200")
    if fresh_cache:
        environment["LORAKIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="cache-", dir=work)
    output_dir = work / label.replace(" ", "-")
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "lorakit", "train", str(CONFIG), "--overwrite",
               "--set", f"output_dir={output_dir}"]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment,
                               cwd=REPO)
    phase, peaks, lines = ["load"], {"load": 0.0, "train": 0.0, "answer": 0.0}, []

    def read_output():
        for line in process.stdout:
            lines.append(line)
            if phase[0] == "load" and line.startswith("on CPU each micro-batch"):
                phase[0] = "train"
            elif line.startswith("done:"):
                phase[0] = "answer"

    reader = threading.Thread(target=read_output)
    reader.start()
    while process.poll() is None:
        peaks[phase[0]] = max(peaks[phase[0]], _resident_gib(process.pid))
        time.sleep(0.2)
    reader.join()
    wall = time.perf_counter() - started
    text = "".join(lines)
    if process.returncode != 0:
        raise SystemExit(f"{label} failed (exit {process.returncode}):\n{text[-4000:]}")
    field = lambda name: re.search(rf"{name}: ([\d.:]+)", text).group(1)  # noqa: E731
    test_loss = re.search(r"test loss ([\d.]+)", text)
    return {"label": label, "peak_rss_gib": int(field(r"Maximum resident set size \(kbytes\)")) / 2**20,
            "sampled_peak_gib": peaks, "wall_s": wall, "cpu_s": float(field(r"User time \(seconds\)"))
            + float(field(r"System time \(seconds\)")), "test_loss": test_loss.group(1) if test_loss else None,
            "converted": "Converting" in text}


def _header(title: str, columns: list[str]) -> list[str]:
    """The results file's first lines: what ran, on what, the command, and the table's head."""
    return [f"{title}, {os.cpu_count()} CPUs, load average before: {os.getloadavg()[0]:.1f}",
            "command: python bench/cpu_demo_memory.py " + " ".join(sys.argv[1:]), "",
            "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def whole_table(args, rows: list[dict]) -> list[str]:
    lines = _header(f"README command (lorakit train examples/config.yaml --overwrite, output_dir in a temporary "
                    f"folder), {'an empty LORAKIT_CACHE_DIR per run (GGUF converted first)' if args.fresh_cache else 'converted model cached'}"
                    f", {args.rounds} round(s)",
                    ["run", "round", "peak RSS GiB (time -v)", "sampled peak GiB: load / train / answer", "wall s",
                     "CPU s", "test loss"])
    for r in rows:
        sampled = " / ".join(f"{r['sampled_peak_gib'][phase]:.2f}" for phase in ("load", "train", "answer"))
        lines.append(f"| {r['label']} | {r['round']} | {r['peak_rss_gib']:.2f} | {sampled} | {r['wall_s']:.0f} | "
                     f"{r['cpu_s']:.0f} | {r['test_loss']} |")
    base = [r for r in rows if r["label"].startswith("baseline")]
    current = [r for r in rows if r["label"].startswith("current")]
    mean = lambda rs, key: statistics.mean(r[key] for r in rs)  # noqa: E731
    return lines + ["", f"peak RSS: baseline {mean(base, 'peak_rss_gib'):.2f} GiB -> current "
                    f"{mean(current, 'peak_rss_gib'):.2f} GiB (x{mean(current, 'peak_rss_gib') / mean(base, 'peak_rss_gib'):.2f})",
                    f"CPU s: baseline {mean(base, 'cpu_s'):.0f} -> current {mean(current, 'cpu_s'):.0f} "
                    f"(x{mean(current, 'cpu_s') / mean(base, 'cpu_s'):.2f})"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--baseline", default="bc11f75")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "cpu_demo_memory.txt")
    parser.add_argument("--whole", action="store_true", help="measure the README's whole command")
    parser.add_argument("--fresh-cache", action="store_true", help="--whole with an empty LORAKIT_CACHE_DIR per run")
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
                row = measure_whole(label, src, work, args.fresh_cache) if args.whole else measure(label, src, args.steps, work)
                row["round"] = round_index + 1
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(baseline_tree)], capture_output=True)
    if args.whole:
        text = "\n".join(whole_table(args, rows))
        print(text)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        return
    base = [r for r in rows if r["label"].startswith("baseline")]
    current = [r for r in rows if r["label"].startswith("current")]
    lines = _header(f"README CPU demo (examples/config.yaml: SmolLM2-135M-Instruct, batch 8, max_length 384, fp32), "
                    f"{args.steps} steps, {args.rounds} round(s)",
                    ["run", "round", "peak RSS GiB", "CPU s/step (steps 2..N)", "wall s/step", "wall step times s",
                     "first step s (wall)", "logged train loss"])
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
