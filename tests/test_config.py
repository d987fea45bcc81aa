"""Config: the guide layout loads unchanged; every problem is reported at once with suggestions."""

import logging
from pathlib import Path

import pytest

from lorakit.config import InferenceConfig, RunConfig, load_config
from lorakit.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

GUIDE_LAYOUT = """\
seed: 42
output_dir: ./outputs
mode: train
model:
  name: microsoft/Phi-4-mini-instruct
  max_length: 512
lora:
  r: 16
  alpha: 32
  dropout: 0.05
  target_modules: [qkv_proj, o_proj]
training:
  batch_size: 4
  max_steps: 100
  learning_rate: 2e-4
  gradient_accumulation_steps: 8
  logging_steps: 10
  early_stopping_patience: 3
data:
  train_file: data/train.jsonl
  test_split: 0.1
  validation_split: 0.1
  system_prompt: "You are a careful medical education assistant."
inference:
  adapter_path: ${output_dir}/${model_name}-lora
  interactive: false
  demo_question: "What is hypertension?"
  max_new_tokens: 256
  temperature: 0.7
  top_p: 0.9
  offload_dir: ./offload
"""


def write(tmp_path, text, name="config.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_guide_layout_loads_unchanged(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="lorakit"):
        config = load_config(write(tmp_path, GUIDE_LAYOUT))
    assert config.training.learning_rate == pytest.approx(2e-4)  # YAML reads 2e-4 as a string
    assert isinstance(config.training.learning_rate, float)
    assert config.model.max_length == 512
    assert config.inference.demo_question == "What is hypertension?"
    assert config.training.gradient_accumulation_steps == 8
    assert config.data.train_files == ["data/train.jsonl"]


def test_learning_rate_as_quoted_string(tmp_path):
    config = load_config(write(tmp_path, GUIDE_LAYOUT.replace("learning_rate: 2e-4", 'learning_rate: "3e-4"')))
    assert config.training.learning_rate == pytest.approx(3e-4)


def test_unknown_key_names_line_and_suggests_closest(tmp_path):
    path = write(tmp_path, GUIDE_LAYOUT.replace("  max_steps: 100", "  max_stepz: 100"))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == ["line 14: training.max_stepz: unknown key; did you mean 'training.max_steps'?"]
    assert caught.value.exit_code == 2


def test_all_problems_reported_at_once(tmp_path):
    text = GUIDE_LAYOUT.replace("  r: 16", "  r: 0").replace("mode: train", "mode: fly").replace("  dropout: 0.05", "  dropuot: 0.05")
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    problems = caught.value.problems
    assert len(problems) == 3
    assert "line 3: mode: Input should be 'train', 'inference' or 'both' (got 'fly')" in problems
    assert "line 8: lora.r: Input should be greater than or equal to 1 (got 0)" in problems
    assert "line 10: lora.dropuot: unknown key; did you mean 'lora.dropout'?" in problems


def test_overrides_apply_and_are_validated(tmp_path):
    path = write(tmp_path, GUIDE_LAYOUT)
    config = load_config(path, ["training.max_steps=10", "lora.target_modules=all-linear"])
    assert config.training.max_steps == 10 and config.lora.target_modules == "all-linear"
    with pytest.raises(ConfigError) as caught:
        load_config(path, ["training.max_stepss=10"])
    assert caught.value.problems == ["--set training.max_stepss: unknown key; did you mean 'training.max_steps'?"]
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(path, ["training.max_steps"])


def test_contradictions_rejected(tmp_path):
    with pytest.raises(ConfigError, match="warmup_steps \\(200\\) must be smaller than max_steps \\(100\\)"):
        load_config(write(tmp_path, GUIDE_LAYOUT), ["training.warmup_steps=200"])
    with pytest.raises(ConfigError, match="validation_split \\+ test_split must be below 0.9"):
        load_config(write(tmp_path, GUIDE_LAYOUT), ["data.test_split=0.5", "data.validation_split=0.45"])


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_invalid_yaml_names_line(tmp_path):
    with pytest.raises(ConfigError, match="line 2, column"):
        load_config(write(tmp_path, "seed: 1\n  bad: indent\n"))


def test_a_config_that_is_not_utf8_names_the_line(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_bytes(b"seed: 1\nmodel:\n  name: caf\xe9\n")
    with pytest.raises(ConfigError) as raised:
        load_config(config)
    assert str(raised.value) == (f"{config}: 1 config problem:\n"
                                 "  - line 3: not UTF-8 text (byte 0xe9); save the file as UTF-8 in your editor")
    assert raised.value.exit_code == 2


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")) + [REPO / "examples" / "config.yaml"],
                         ids=lambda p: p.name)
def test_shipped_configs_load(path):
    config = load_config(path)
    assert isinstance(config, RunConfig)
    assert config.data.system_prompt


def test_empty_train_file_list_is_named_as_such(tmp_path):
    """Issue 9, point 4: `train_file: []` used to fail later with advice to lower the split fractions."""
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, GUIDE_LAYOUT.replace("train_file: data/train.jsonl", "train_file: []")))
    assert caught.value.problems == ["line 20: data.train_file: the list of training files is empty; "
                                     "name at least one JSONL file (got [])"]
    assert caught.value.exit_code == 2


@pytest.mark.parametrize("seed, problem", [
    (2**32, "line 1: seed: Input should be less than or equal to 4294967295 (got 4294967296)"),
    (184461906879890, "line 1: seed: Input should be less than or equal to 4294967295 (got 184461906879890)"),
    (-1, "line 1: seed: Input should be greater than or equal to 0 (got -1)"),
])
def test_seed_outside_numpy_range_is_refused(tmp_path, seed, problem):
    """Issue 9, point 4: a seed of about 1.8e14 or more crashed at training step 1 (torch generator overflow)."""
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, GUIDE_LAYOUT.replace("seed: 42", f"seed: {seed}")))
    assert caught.value.problems == [problem]
    assert load_config(write(tmp_path, GUIDE_LAYOUT.replace("seed: 42", f"seed: {2**32 - 1}"))).seed == 2**32 - 1


def test_retired_inference_keys_are_dropped_with_a_warning_that_says_what_does_the_job(tmp_path, caplog):
    """Issue 9, point 4: inference.adapter_path, .interactive and .offload_dir were validated and documented but
    read by no code. They are gone; the guide's configs that carry them still load, and say so once per key."""
    path = write(tmp_path, GUIDE_LAYOUT)
    with caplog.at_level(logging.WARNING, logger="lorakit"):
        config = load_config(path, ["inference.offload_dir=/tmp/x"])
    assert [r.getMessage() for r in caplog.records] == [
        f"{path} line 25: inference.adapter_path is no longer used and was ignored: the adapter is always written to "
        "OUTPUT_DIR/final; pass the run folder to `lorakit chat RUN_DIR` or `lorakit eval RUN_DIR`",
        f"{path} line 26: inference.interactive is no longer used and was ignored: `lorakit chat RUN_DIR` chats "
        "interactively; `lorakit chat RUN_DIR --question TEXT` answers once",
        f"{path} line 31: inference.offload_dir is no longer used and was ignored: lorakit loads the whole model on one "
        "device; model.quantization: nf4 fits it on a smaller GPU",
    ]
    assert all(r.levelname == "WARNING" for r in caplog.records)
    for key in ("adapter_path", "interactive", "offload_dir"):
        assert key not in InferenceConfig.model_fields and key not in config.inference.model_dump()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lorakit"):  # a config lorakit saved itself: no warning
        load_config(path, warn_retired=False)
    assert not caplog.records
    with pytest.raises(ConfigError) as caught:  # any other unknown inference key is still an error
        load_config(path, ["inference.adapter_paths=x"])
    assert caught.value.problems == ["--set inference.adapter_paths: unknown key"]
