"""Issue 9, point 4: fuzz the seed and numeric settings through a real training step.

tests/cli/test_input_robustness.py stubs training out, so a value that validates but breaks the step itself
(a seed of 1.8e14 overflowed torch's generator seed at step 1) passed it. Here every drawn config runs the
real `lorakit train` on the tiny model for one optimizer step: it must train (exit 0, final adapter written),
or be refused with a message (exit 2 config error, exit 3 training fault), never end in a traceback.
"""

from __future__ import annotations

import itertools
import re

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import write_qa_jsonl
from lorakit.cli.app import run_cli
from lorakit.config import SEED_MAX

# The smallest seed whose old epoch seed (seed * 100_003 + epoch) overflowed torch: it crashed at step 1.
OVERFLOWED = 2**64 // 100_003 + 1  # 184461906879890
SEEDS = st.integers(0, 2**64) | st.sampled_from([0, SEED_MAX, SEED_MAX + 1, OVERFLOWED, 2**63, -1])
FINITE = dict(allow_nan=False, allow_infinity=False)
TRAINING = st.fixed_dictionaries({}, optional={
    "learning_rate": st.floats(1e-8, 0.5, **FINITE),
    "weight_decay": st.floats(0, 10, **FINITE),
    "max_grad_norm": st.none() | st.floats(1e-6, 1e6, **FINITE),
    "batch_size": st.integers(1, 16),
    "gradient_accumulation_steps": st.integers(1, 3),
    "lr_scheduler": st.sampled_from(["cosine", "linear", "constant"]),
    "packing": st.booleans(),
})
LORA = st.fixed_dictionaries({}, optional={
    "r": st.integers(1, 64), "alpha": st.floats(1e-3, 1e3, **FINITE), "dropout": st.floats(0, 0.99, **FINITE),
})
MODEL = st.fixed_dictionaries({}, optional={"max_length": st.integers(16, 3000)})  # the model takes 2048
DATA = st.fixed_dictionaries({}, optional={
    "validation_split": st.floats(0, 0.45, **FINITE), "test_split": st.floats(0, 0.4, **FINITE),
})

_counter = itertools.count()


def _config_file(root, seed, training, lora, model, data):
    data_file = write_qa_jsonl(root / "qa.jsonl")
    config = {
        "seed": seed, "output_dir": str(root / "run"),
        "model": {"name": str(root.parent / "model"), "max_length": 128, **model},
        "lora": {"r": 4, "alpha": 8, **lora},
        "training": {"max_steps": 1, "logging_steps": 1, "eval_steps": 1, "save_steps": 1, "batch_size": 2,
                     **training},
        "data": {"train_file": str(data_file), "system_prompt": "Be careful.", **data},
        "inference": {"max_new_tokens": 4},
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck))  # ~5 s per real run
@example(seed=OVERFLOWED, training={}, lora={}, model={}, data={})  # crashed at step 1 before the bound
@example(seed=SEED_MAX, training={"packing": True}, lora={}, model={}, data={})
@given(seed=SEEDS, training=TRAINING, lora=LORA, model=MODEL, data=DATA)
def test_fuzz_seed_and_numeric_settings_through_one_real_training_step(
        tiny_llama_dir, tmp_path, capsys, seed, training, lora, model, data):
    root = tmp_path / f"case-{next(_counter)}"
    root.mkdir()
    (root.parent / "model").exists() or (root.parent / "model").symlink_to(tiny_llama_dir)
    config = _config_file(root, seed, training, lora, model, data)
    capsys.readouterr()
    code = run_cli(["train", str(config)])  # a traceback escapes run_cli and fails the test
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert code in (0, 2, 3), (code, err)
    if code == 0:
        assert (root / "run" / "final" / "adapter_model.safetensors").is_file()
    else:
        assert "error:" in err, err
    seed_refused = re.search(r"line \d+: seed: Input should be (greater|less) than or equal to", err)
    assert bool(seed_refused) == (not 0 <= seed <= SEED_MAX), err
    too_long = model.get("max_length", 128) > 2048
    assert too_long == ("is more than the model's max_position_embeddings (2048" in err) or not 0 <= seed <= SEED_MAX, err
