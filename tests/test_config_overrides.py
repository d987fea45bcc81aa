"""`--set` problems are blamed on `--set`, not on the YAML file, and a mistyped key gets a suggestion."""

from __future__ import annotations

import pytest

from lorakit.config import closest_key, load_config
from lorakit.errors import ConfigError

CONFIG = "training:\n  max_steps: 4\ndata:\n  train_file: data.jsonl\n"


def _problems(tmp_path, text, overrides):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, overrides)
    return caught.value


def test_set_typo_names_set_as_the_source_and_suggests_the_key(tmp_path):
    error = _problems(tmp_path, CONFIG, ["training.lr=3e-4"])
    assert error.source == "--set"
    assert error.message == ("--set: 1 config problem:\n"
                             "  - --set training.lr: unknown key; did you mean 'training.learning_rate'?")


def test_set_value_error_is_not_blamed_on_the_files_line_for_the_same_key(tmp_path):
    error = _problems(tmp_path, CONFIG, ["training.max_steps=0"])
    assert error.problems == ["--set training.max_steps: Input should be greater than or equal to 1 (got 0)"]


def test_file_and_set_problems_each_name_their_own_source(tmp_path):
    error = _problems(tmp_path, "training:\n  max_steps: 0\ndata:\n  train_file: d.jsonl\n", ["training.bs=2"])
    assert error.source == str(tmp_path / "config.yaml")
    assert error.problems == ["line 2: training.max_steps: Input should be greater than or equal to 1 (got 0)",
                              "--set training.bs: unknown key; did you mean 'training.batch_size'?"]


@pytest.mark.parametrize("typo, meant", [
    ("lr", "learning_rate"), ("bs", "batch_size"), ("grad_accum", "gradient_accumulation_steps"),
    ("max_step", "max_steps"), ("warmup", "warmup_steps"),
])
def test_closest_key_reads_abbreviations(typo, meant):
    from lorakit.config import TrainingConfig

    assert closest_key(typo, list(TrainingConfig.model_fields)) == meant


def test_closest_key_does_not_invent_a_match():
    from lorakit.config import TrainingConfig

    assert closest_key("colour", list(TrainingConfig.model_fields)) is None
