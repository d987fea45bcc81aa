"""Same seed, same run: four deterministic CPU training runs on the tests' tiny random Llama, summarised as JSON
(every logged loss and learning rate, the SHA-256 of every checkpoint and final/ weight file, the reporter's
messages) plus the `lorakit train` CLI's output, to compare two versions of the training code bit for bit.

    PYTHONPATH=src python bench/same_seed_runs.py OUT > OUT.json   # then the same on the other version; diff

Runs: (a) accumulation 2 with early stopping on, (b) packing, killed after step 3 and resumed, (c) the CLI
(OUT/cli.out, OUT/cli.json), (d) early stopping that fires (final/ = the best checkpoint). TESTS_DIR picks the
tests/ folder whose conftest.py builds the model (default: this repository's).
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, os.environ.get("TESTS_DIR", str(Path(__file__).resolve().parents[1] / "tests")))
import yaml  # noqa: E402
from conftest import QA_PAIRS, Recorder, build_tiny_model, tiny_run_config, write_qa_jsonl  # noqa: E402

from lorakit.training.loop import train  # noqa: E402

out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
model = out / "model"
if not model.exists():
    build_tiny_model(model)
data = write_qa_jsonl(out / "qa.jsonl", QA_PAIRS * 3)

def digest(run):
    res = {}
    for p in sorted(run.rglob("*")):
        if p.is_file() and p.suffix in (".safetensors", ".pt", ".bin"):
            res[str(p.relative_to(run))] = hashlib.sha256(p.read_bytes()).hexdigest()[:16]
    metrics = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    for m in metrics: m.pop("tokens_per_second", None)
    return res, metrics

summary = {}
# 1: straight run, grad accumulation, early stopping, packing off
cfg = tiny_run_config(model, data, out / "a", max_steps=8, gradient_accumulation_steps=2, eval_steps=2, save_steps=3,
                      early_stopping_patience=3)
r = Recorder(); train(cfg, reporter=r)
summary["a"] = dict(zip(("files", "metrics"), digest(out / "a")), messages=r.messages, losses=r.losses)
# 2: crash after 3 + resume, packing
cfg = tiny_run_config(model, data, out / "b", max_steps=6, gradient_accumulation_steps=2, packing=True, save_steps=2)
try:
    train(cfg, reporter=Recorder(crash_after_step=3))
except KeyboardInterrupt:
    pass
r = Recorder(); train(cfg, resume=True, reporter=r)
summary["b"] = dict(zip(("files", "metrics"), digest(out / "b")), messages=r.messages, losses=r.losses)
# 4: early stopping that fires (no evaluation improves by 100), final/ = the best checkpoint
cfg = tiny_run_config(model, data, out / "d", max_steps=10, eval_steps=1, save_steps=4, early_stopping_patience=2,
                      early_stopping_min_delta=100.0)
r = Recorder(); train(cfg, reporter=r)
summary["d"] = dict(zip(("files", "metrics"), digest(out / "d")), messages=r.messages, losses=r.losses)
print(json.dumps(summary, indent=1, sort_keys=True))
# 3: CLI progress output
_y = yaml
cfgfile = out / "cli.yaml"
_y.safe_dump({"seed": 3, "output_dir": str(out / "c"), "model": {"name": str(model), "max_length": 128},
              "lora": {"r": 4, "alpha": 8}, "training": {"max_steps": 5, "batch_size": 2, "logging_steps": 1, "eval_steps": 2,
              "save_steps": 2, "learning_rate": 0.01}, "data": {"train_file": str(data), "system_prompt": "Be careful."},
              "eval": {"after_training": False}}, cfgfile.open("w"))
p = subprocess.run([sys.executable, "-m", "lorakit", "train", str(cfgfile), "--overwrite"], capture_output=True, text=True,
                   env={**os.environ, "COLUMNS": "150"})
(out / "cli.out").write_text(p.stdout + "\n-----\n" + p.stderr)
print(json.dumps(digest(out / "c"), indent=1), file=open(out / "cli.json", "w"))
