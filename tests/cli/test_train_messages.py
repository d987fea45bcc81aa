"""What `lorakit train` tells a user around the run (issue 9): interval warnings, progress off a terminal,
the order of data check and memory plan, no empty run folder after a data error, the --skip-invalid hint
only where it helps, and Ctrl-C with the exact --resume command."""

from __future__ import annotations

import json
import re
import shlex

import pytest

from conftest import write_config_file
from lorakit.cli.app import run_cli
from lorakit.config import TrainingConfig
from lorakit.training.metrics import interval_warnings

GUIDE_TRAINING = dict(batch_size=4, gradient_accumulation_steps=8, max_steps=4, logging_steps=10,
                      early_stopping_patience=3)  # the guide's config with a 4-step trial run; eval/save 50


def test_interval_warnings_name_keys_values_and_fix_for_the_guides_config():
    assert interval_warnings(TrainingConfig(**GUIDE_TRAINING), has_validation=True) == [
        "training.logging_steps=10 exceeds training.max_steps=4: the training loss is logged once, at the last step; "
        "set logging_steps to at most 4",
        "training.eval_steps=50 exceeds training.max_steps=4: the validation loss is computed once, at the last "
        "step; set eval_steps to at most 4",
        "training.save_steps=50 exceeds training.max_steps=4: no checkpoint is written before the end, so an "
        "interrupted run restarts from step 0; set save_steps to at most 4",
        "training.early_stopping_patience=3 can never stop this run: it needs 4 validation evaluations, but "
        "eval_steps=50 with max_steps=4 gives 1; set eval_steps to at most 1",
    ]


def test_early_stopping_warning_when_evaluations_are_too_few_even_within_max_steps():
    training = TrainingConfig(max_steps=20, logging_steps=2, eval_steps=10, save_steps=10, early_stopping_patience=3)
    assert interval_warnings(training, has_validation=True) == [
        "training.early_stopping_patience=3 can never stop this run: it needs 4 validation evaluations, but "
        "eval_steps=10 with max_steps=20 gives 2; set eval_steps to at most 5"]
    assert interval_warnings(training.model_copy(update={"eval_steps": 5}), has_validation=True) == []


def test_early_stopping_without_validation_data_or_room_is_named():
    no_room = TrainingConfig(max_steps=2, logging_steps=1, eval_steps=1, save_steps=1, early_stopping_patience=3)
    assert interval_warnings(no_room, has_validation=True) == [
        "training.early_stopping_patience=3 can never stop this run: it needs 4 validation evaluations, but "
        "eval_steps=1 with max_steps=2 gives 2; raise max_steps to at least 4 or lower early_stopping_patience"]
    assert interval_warnings(no_room, has_validation=False) == [
        "training.early_stopping_patience=3 can never stop this run: there is no validation data; set "
        "data.validation_split above 0 or early_stopping_patience to null"]


def test_train_prints_each_interval_warning_once(tiny_llama_dir, tmp_path, capsys):
    config = write_config_file(tmp_path, tiny_llama_dir, seed=1, training={
        "batch_size": 2, "max_steps": 2, "logging_steps": 10, "early_stopping_patience": 3})
    assert run_cli(["train", str(config)]) == 0
    err = capsys.readouterr().err
    for key in ("logging_steps=10", "eval_steps=50", "save_steps=50", "early_stopping_patience=3"):
        assert err.count(f"WARNING  training.{key} ") == 1, err
    assert "step 2/2  loss " in err  # the last step is logged even though logging_steps > max_steps


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_progress_line_off_a_terminal_at_least_every_interval_whatever_logging_steps(capsys):
    from lorakit.cli.progress import PLAIN_LINE_INTERVAL_S, RichTrainingReporter

    assert PLAIN_LINE_INTERVAL_S == 120.0
    clock = _Clock()
    reporter = RichTrainingReporter(clock=clock)
    reporter.start(total_steps=100, first_step=0)
    capsys.readouterr()
    clock.now += 119.0
    reporter.step(1, {"step": 1})  # not a log step, not yet 120 s
    assert capsys.readouterr().err == ""
    clock.now += 1.0
    reporter.step(2, {"step": 2})  # 120 s since the last line: a line although nothing was logged
    assert capsys.readouterr().err.startswith("step 2/100  loss -  val -  - tok/s  ETA ")
    clock.now += 60.0
    reporter.step(3, {"step": 3})
    assert capsys.readouterr().err == ""
    reporter.step(4, {"step": 4, "train_loss": 1.5, "tokens_per_second": 1234.0})  # a log step: always a line
    assert capsys.readouterr().err.startswith("step 4/100  loss 1.5000  val -  1,234 tok/s  ETA ")
    clock.now += 119.0
    reporter.step(5, {"step": 5})  # the interval counts from the last line printed
    assert capsys.readouterr().err == ""
    reporter.finish()


@pytest.mark.parametrize("step_s, first_step, eta", [(2.0, 0, "3m00s"), (200.0, 0, "5h00m"), (200.0, 50, "2h13m")],
                         ids=["2s-steps", "200s-steps", "200s-steps-after-resume-at-50"])
def test_eta_is_mean_step_time_since_start_times_steps_left(step_s, first_step, eta, capsys):
    """Issue 25: rich's estimate looks at a 30-second window and showed `ETA -` once steps took longer."""
    from lorakit.cli.progress import RichTrainingReporter

    clock = _Clock()
    reporter = RichTrainingReporter(clock=clock)
    reporter.start(total_steps=100, first_step=first_step)
    capsys.readouterr()
    for step in range(first_step + 1, first_step + 11):
        clock.now += step_s
        reporter.step(step, {"step": step, "train_loss": 1.5, "tokens_per_second": 10.0})
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1] == f"step {first_step + 10}/100  loss 1.5000  val -  10 tok/s  ETA {eta}"
    assert reporter.progress.tasks[0].fields["eta"] == eta  # the live bar on a terminal shows the same
    reporter.finish()


def _bad_data_config(tmp_path, tiny_llama_dir, data_text=None, missing=False):
    config = write_config_file(tmp_path, tiny_llama_dir, seed=1, training={"batch_size": 2, "max_steps": 2},
                               output_dir=str(tmp_path / "runs" / "new-run"))
    data = tmp_path / "qa.jsonl"
    if missing:
        data.unlink()
    elif data_text is not None:
        data.write_text(data.read_text() + data_text)
    return config, data


def test_data_error_leaves_no_run_folder_and_comes_before_the_memory_plan(tmp_path, tiny_llama_dir, capsys):
    config, data = _bad_data_config(tmp_path, tiny_llama_dir, '{"instruction": "q", "respons": "typo"}\n')
    assert run_cli(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{data}:13" in err
    assert "memory plan" not in err  # the planner (quantization: auto) runs only once the data is good
    assert not (tmp_path / "runs").exists()  # neither the run folder nor the parent it created


def test_data_error_keeps_a_run_folder_that_existed(tmp_path, tiny_llama_dir, capsys):
    config, _ = _bad_data_config(tmp_path, tiny_llama_dir, '{"instruction": "q"}\n')
    (tmp_path / "runs" / "new-run").mkdir(parents=True)
    assert run_cli(["train", str(config)]) == 2
    assert (tmp_path / "runs" / "new-run").is_dir()


def test_memory_plan_is_printed_after_the_data_is_read(tmp_path, tiny_llama_dir, capsys):
    config = write_config_file(tmp_path, tiny_llama_dir, seed=1, training={"batch_size": "auto", "max_steps": 1})
    assert run_cli(["train", str(config)]) == 0
    err = capsys.readouterr().err
    assert err.index("data: 10 train / 1 validation / 1 test examples") < err.index("memory plan:")
    # batch_size auto on 10 training examples: micro-batch 10, the most they fill (64 x 128 tokens fit in RAM)
    assert re.search(r"memory plan: none, micro-batch (\d+),", err).group(1) == "10"


def test_skip_invalid_hint_only_for_bad_lines_without_the_flag(tmp_path, tiny_llama_dir, capsys):
    config, _ = _bad_data_config(tmp_path, tiny_llama_dir, '{"instruction": "q"}\n')
    assert run_cli(["train", str(config)]) == 2
    assert "pass --skip-invalid to train on the valid lines only" in capsys.readouterr().err


def test_skip_invalid_hint_not_shown_for_a_missing_file(tmp_path, tiny_llama_dir, capsys):
    config, data = _bad_data_config(tmp_path, tiny_llama_dir, missing=True)
    assert run_cli(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{data}: error: file not found" in err
    assert "--skip-invalid" not in err


def test_skip_invalid_given_with_a_missing_file_says_what_it_cannot_skip(tmp_path, tiny_llama_dir, capsys):
    config, _ = _bad_data_config(tmp_path, tiny_llama_dir, missing=True)
    assert run_cli(["train", str(config), "--skip-invalid"]) == 2
    err = capsys.readouterr().err
    assert "pass --skip-invalid" not in err
    assert "--skip-invalid skips invalid lines, not a file that is missing or cannot be read as a whole." in err


def test_ctrl_c_prints_the_exact_resume_command_and_exits_130_then_resume_finishes(
        tiny_llama_dir, tmp_path, capsys, monkeypatch):
    from lorakit.cli.progress import RichTrainingReporter

    config = write_config_file(tmp_path, tiny_llama_dir, seed=1, training={
        "batch_size": 2, "max_steps": 4, "logging_steps": 1, "eval_steps": 2, "save_steps": 2})
    original_step = RichTrainingReporter.step

    def interrupted_at_step_3(self, step, metrics):
        original_step(self, step, metrics)
        if step == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(RichTrainingReporter, "step", interrupted_at_step_3)
    argv = ["train", str(config), "--set", "training.learning_rate=0.01", "--allow-phi"]
    assert run_cli(argv) == 130
    err = capsys.readouterr().err
    command = shlex.join(["lorakit", *argv, "--resume"])
    assert f"interrupted: continue with `{command}` (from the checkpoint at step 2)\n" in err

    monkeypatch.setattr(RichTrainingReporter, "step", original_step)
    assert run_cli(shlex.split(command)[1:]) == 0
    assert "resumed from step-00000002 (step 2)" in capsys.readouterr().err
    assert json.loads((tmp_path / "run" / "final" / "manifest.json").read_text())["metrics"]["steps"] == 4


def test_ctrl_c_before_the_first_checkpoint_says_it_starts_again(tiny_llama_dir, tmp_path, capsys, monkeypatch):
    import lorakit.training.loop as loop

    config = write_config_file(tmp_path, tiny_llama_dir, seed=1, training={"batch_size": 2, "max_steps": 4})

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "train", interrupted)
    assert run_cli(["train", str(config)]) == 130
    assert capsys.readouterr().err == (f"interrupted: continue with `lorakit train {config} --resume` "
                                       "(no checkpoint was written yet, so it starts again from step 0)\n")


@pytest.mark.parametrize("level, shown", [("INFO", False), ("DEBUG", True)])
def test_token_cache_hits_are_debug_only(tokenizer, tmp_path, caplog, level, shown):
    import logging

    from lorakit.data.conversation import Conversation, Message
    from lorakit.data.token_cache import render_cached

    conversations = [Conversation((Message("user", "Q?"), Message("assistant", "A.")), "d.jsonl", 1)]
    render_cached(conversations, tokenizer, "Be brief.", 64, cache_dir=tmp_path)
    with caplog.at_level(getattr(logging, level), logger="lorakit"):
        render_cached(conversations, tokenizer, "Be brief.", 64, cache_dir=tmp_path)
    assert any("loaded from cache" in r.getMessage() for r in caplog.records) is shown
    assert [r for r in caplog.records if r.levelno >= logging.INFO] == []
