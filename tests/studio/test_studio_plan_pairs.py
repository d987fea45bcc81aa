"""The studio's plan of a DPO run counts the run's own pairs, as `lorakit plan` does (training/planned_pairs.py's
plan_run_on_data, the one call both make), and says which pairs it counted; an SFT plan names none."""

from __future__ import annotations

import json
import re

from studio_harness import run_choices, studio_client

from conftest import QA_PAIRS, write_qa_jsonl


def test_a_dpo_plan_says_it_counted_the_runs_pairs(tmp_path, tiny_llama_dir):
    client = studio_client(tmp_path / "work")
    pairs = "".join(json.dumps({"prompt": q, "chosen": a, "rejected": QA_PAIRS[(i + 1) % len(QA_PAIRS)][1]}) + "\n"
                    for i, (q, a) in enumerate(QA_PAIRS))
    assert client.put("/api/data/files/pairs.jsonl", content=pairs.encode()).status_code == 200
    choices = run_choices(str(tiny_llama_dir), data_files=["pairs.jsonl"], method="dpo", gpu_memory="8GB")
    plan = client.post("/api/plan", json=choices).json()
    assert re.fullmatch(r"planned on \d+ pairs of .*pairs\.jsonl \(the run's training split, in its data order\)",
                        plan["pairs"]), plan
    assert client.put("/api/data/files/qa.jsonl", content=write_qa_jsonl(tmp_path / "qa.jsonl").read_bytes()).status_code == 200
    sft = client.post("/api/plan", json=run_choices(str(tiny_llama_dir), gpu_memory="8GB")).json()
    assert sft["pairs"] is None and sft["chosen"]["fits"] is True
