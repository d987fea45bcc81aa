"""`lorakit train` and `lorakit chat` through the real CLI entry point on a tiny model."""

import pytest

from conftest import write_config_file
from lorakit.cli.app import run_cli


def _config_file(tmp_path, model_dir, **training):
    settings = {"batch_size": 2, "max_steps": 3, "learning_rate": 1e-2, "logging_steps": 1, "eval_steps": 3, "save_steps": 3}
    settings.update(training)
    return write_config_file(tmp_path, model_dir, seed=1, training=settings,
                             inference={"max_new_tokens": 6, "temperature": 0.0, "disclaimer": "Educational only."})


def test_train_then_chat_question(tiny_llama_dir, tmp_path, capsys):
    config = _config_file(tmp_path, tiny_llama_dir)
    assert run_cli(["train", str(config), "--set", "training.max_steps=2"]) == 0
    out = capsys.readouterr()
    assert "done: 2 steps" in out.out
    assert (tmp_path / "run" / "final" / "adapter_model.safetensors").is_file()

    assert run_cli(["chat", str(tmp_path / "run"), "--question", "What is insulin?"]) == 0
    out = capsys.readouterr().out
    assert "question: What is insulin?" in out
    assert out.rstrip().endswith("Educational only.")


def test_mode_inference_answers_from_the_finished_run_and_trains_nothing(tiny_llama_dir, tmp_path, capsys):
    config = _config_file(tmp_path, tiny_llama_dir)
    assert run_cli(["train", str(config), "--set", "mode=inference"]) == 2  # no run yet: said, nothing trained
    assert f"error: {tmp_path / 'run'} does not exist." in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    assert run_cli(["train", str(config), "--set", "training.max_steps=2"]) == 0
    capsys.readouterr()
    adapter = tmp_path / "run" / "final" / "adapter_model.safetensors"
    before = adapter.stat().st_mtime_ns, sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert run_cli(["train", str(config), "--set", "mode=inference",
                    "--set", "inference.demo_question=What is insulin?"]) == 0
    out = capsys.readouterr().out
    assert f"mode: inference: answering inference.demo_question with the run in {tmp_path / 'run'}" in out
    assert "question: What is insulin?" in out and out.rstrip().endswith("Educational only.")
    assert (adapter.stat().st_mtime_ns, sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())) == before


def test_chat_missing_run_dir_is_exit_2(tmp_path, capsys):
    assert run_cli(["chat", str(tmp_path / "nope"), "--question", "hi"]) == 2
    err = capsys.readouterr().err
    assert f"error: {tmp_path / 'nope'} does not exist." in err
    assert "Traceback" not in err


def test_chat_run_dir_without_adapter_is_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert run_cli(["chat", str(tmp_path / "empty"), "-q", "hi"]) == 2
    assert "holds no trained adapter" in capsys.readouterr().err


def test_train_config_error_is_one_message_exit_2(tmp_path, tiny_llama_dir, capsys):
    config = _config_file(tmp_path, tiny_llama_dir)
    assert run_cli(["train", str(config), "--set", "training.max_stepz=2", "--set", "lora.r=0"]) == 2
    err = capsys.readouterr().err
    assert "2 config problems" in err
    assert "training.max_stepz: unknown key; did you mean 'training.max_steps'?" in err
    assert "lora.r: Input should be greater than or equal to 1 (got 0)" in err
    assert "Traceback" not in err


def test_train_bad_data_line_names_file_and_line(tmp_path, tiny_llama_dir, capsys):
    config = _config_file(tmp_path, tiny_llama_dir)
    data = tmp_path / "qa.jsonl"
    data.write_text(data.read_text() + '{"instruction": "q", "respons": "typo"}\n')
    assert run_cli(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{data}:13" in err and "response" in err
    assert not (tmp_path / "run" / "final").exists()


def test_usage_errors_are_non_zero(capsys):
    assert run_cli(["train"]) == 2
    assert run_cli(["chat"]) == 2
    assert run_cli(["no-such-command"]) == 2


def test_help_lists_commands(capsys):
    assert run_cli(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("train", "chat", "data", "doctor"):
        assert command in out


def test_resume_and_overwrite_conflict(tmp_path, tiny_llama_dir, capsys):
    config = _config_file(tmp_path, tiny_llama_dir)
    assert run_cli(["train", str(config), "--resume", "--overwrite"]) == 2
    assert "contradict" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["doctor"]])
def test_doctor_never_prints_token(argv, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_PLANTEDsecretTOKEN1234567890")
    assert run_cli(argv) == 0
    out = capsys.readouterr()
    assert "configured (HF_TOKEN environment variable)" in out.out
    assert "PLANTED" not in out.out + out.err


def test_debug_flag_shows_the_traceback(tmp_path):
    from lorakit.errors import CheckpointError

    with pytest.raises(CheckpointError, match="does not exist"):
        run_cli(["--debug", "chat", str(tmp_path / "nope"), "-q", "hi"])
