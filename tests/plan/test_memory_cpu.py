"""The CPU side of the memory plan predicts what `lorakit train` really holds: the peak resident set of a
training process, measured here in a subprocess with getrusage(RUSAGE_CHILDREN).ru_maxrss."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import replace

import pytest
import yaml

from lorakit.plan.host_memory import CHUNK_LOGIT_ELEMENTS, PROCESS_BASELINE_BYTES, cpu_loss_bytes
from lorakit.plan.memory import GIB, ModelShape, TrainSettings, estimate_peak_memory

SMOLLM2_135M = {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152, "tie_word_embeddings": True}


def test_cpu_loss_term_uses_the_chunk_size_of_the_cpu_cross_entropy():
    from lorakit.model import kernels

    assert CHUNK_LOGIT_ELEMENTS == kernels._CHUNK_LOGIT_ELEMENTS
    # 238 tokens (the bundled data's longest example) fit one chunk; 4 x 512 tokens are cut into chunks of 1,365.
    assert cpu_loss_bytes(238, 49152) == 2 * 238 * 49152 * 4
    assert cpu_loss_bytes(2048, 49152) == 2 * (CHUNK_LOGIT_ELEMENTS // 49152) * 49152 * 4


def test_cpu_estimate_adds_process_loss_chunk_and_heap_to_the_gpu_terms():
    shape = ModelShape.from_config(SMOLLM2_135M)
    settings = TrainSettings(quantization="none", dtype_bytes=4, lora_rank=16, lora_targets="all-linear",
                             lora_dropout=True, tokens_per_micro_batch=2048, fused_kernels=False, mask_bytes=4,
                             kv_expanded=False)
    gpu_terms = estimate_peak_memory(shape, settings)
    cpu = estimate_peak_memory(shape, replace(settings, on_cpu=True))
    assert gpu_terms.process == gpu_terms.heap_fragmentation == 0
    assert cpu.process == PROCESS_BASELINE_BYTES and cpu.loss == cpu_loss_bytes(2048, 49152)
    assert cpu.saved_activations == gpu_terms.saved_activations
    # The guide's micro-batch 4 x 512 on CPU, measured at 7.5 GiB peak RSS (forward of the embedded model):
    # the allocation-only estimate said 4.6 GiB.
    assert gpu_terms.peak_allocated / GIB == pytest.approx(4.62, abs=0.01)
    assert 7.5 * 0.9 < cpu.peak_allocated / GIB < 7.5 * 1.15


def _long_pairs(count: int) -> list[dict]:
    words = "blood pressure heart kidney liver insulin glucose platelet anemia fever asthma vaccine".split()
    answer = " ".join(words[i % len(words)] for i in range(400))  # longer than max_length: every row is full
    return [{"instruction": f"Question {i} about {words[i % len(words)]}?", "response": f"{i}: {answer}"}
            for i in range(count)]


@pytest.mark.slow
def test_cpu_plan_predicts_the_peak_rss_of_a_real_training_run(tmp_path, tokenizer_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from lorakit.config import load_config
    from lorakit.plan.run_plan import plan_training

    shape = dict(SMOLLM2_135M, num_hidden_layers=6)
    model_dir = tmp_path / "model"
    config_kwargs = {k: v for k, v in shape.items() if k != "model_type"}
    AutoModelForCausalLM.from_config(LlamaConfig(**config_kwargs, max_position_embeddings=2048)).save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(model_dir)
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(pair) + "\n" for pair in _long_pairs(24)))
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump({
        "output_dir": str(tmp_path / "run"), "model": {"name": str(model_dir), "max_length": 256},
        # 2 x 256 tokens: a micro-batch CPU training runs as it is (not cut into pieces, plan/micro_batches.py)
        "training": {"batch_size": 2, "max_steps": 1, "logging_steps": 1, "eval_steps": 1, "save_steps": 1},
        "data": {"train_file": str(data), "validation_split": 0.1, "test_split": 0.1},
    }))
    env = dict(os.environ, COLUMNS="200")
    # A wrapper process whose only child is `lorakit train`, so RUSAGE_CHILDREN is that run's peak alone (this
    # test process's own children, from earlier tests, may have peaked higher).
    measure = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
               "print(f'PEAK_RSS_KIB {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}'); sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", measure, sys.executable, "-m", "lorakit", "train", str(config_path)],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    peak = int(re.search(r"PEAK_RSS_KIB (\d+)", result.stdout).group(1)) * 1024

    config = load_config(config_path)
    predicted = plan_training(config, json.loads((model_dir / "config.json").read_text()), 64 * GIB, dtype_bytes=4,
                              nf4_available=False, cuda=False, longest_example=256).chosen.estimate.peak_allocated
    printed = re.search(r"memory plan: .*predicted peak ([\d.]+) GiB of RAM", result.stderr)
    assert printed and float(printed.group(1)) == round(predicted / GIB, 1)  # the plan the run printed
    print(f"CPU plan: predicted {predicted / GIB:.3f} GiB, measured peak RSS {peak / GIB:.3f} GiB")
    assert abs(predicted - peak) / peak < 0.25, f"predicted {predicted / GIB:.2f} GiB, measured {peak / GIB:.2f} GiB"


def test_cpu_plan_is_for_the_pieces_cpu_training_runs():
    """The guide's micro-batch of 4 at max_length 512 runs on CPU as pieces of 2 examples (plan/micro_batches.py),
    each padded to the longest example (238 tokens in the bundled data), not to 512."""
    from lorakit.config import RunConfig
    from lorakit.plan.run_plan import plan_training

    config = RunConfig.model_validate({"model": {"max_length": 512}, "training": {"batch_size": 4},
                                       "data": {"train_file": "qa.jsonl"}})
    plan = plan_training(config, SMOLLM2_135M, 64 * GIB, dtype_bytes=4, nf4_available=False, cuda=False,
                         longest_example=238)
    assert plan.micro_batch == 4 and plan.chosen.settings.tokens_per_micro_batch == 2 * 238
    on_gpu = plan_training(config, SMOLLM2_135M, 64 * GIB, dtype_bytes=4, nf4_available=False, cuda=True,
                           longest_example=238)
    assert on_gpu.chosen.settings.tokens_per_micro_batch == 4 * 238
