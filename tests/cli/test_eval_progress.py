"""`lorakit eval` without a terminal (CI logs, nohup, pipes) prints progress lines (issue 9, point 4)."""

from lorakit.cli import eval as eval_cli
from lorakit.cli.eval import ProgressLines


def test_progress_lines_at_start_every_interval_and_at_the_end(monkeypatch, capsys):
    clock = iter([0.0, 10.0, 31.0, 40.0, 50.0])  # seconds at each call below
    monkeypatch.setattr(eval_cli.time, "monotonic", lambda: next(clock))
    progress = ProgressLines(every_s=30)
    progress("safety", 4, 20)   # a stopped run had saved 4 answers
    progress("safety", 6, 20)   # 10 s later: within the interval, silent
    progress("safety", 10, 20)  # 31 s: 6 answers generated in 31 s
    progress("safety", 12, 20)  # 40 s: silent again
    progress("safety", 20, 20)  # the end: always printed
    assert capsys.readouterr().err.splitlines() == [
        "answering safety: 4/20 (4 saved by an earlier, stopped run)",
        "answering safety: 10/20  0.19 answers/s  ETA 52s",
        "answering safety: 20/20  0.32 answers/s  ETA 0s",
    ]


def test_eval_off_a_terminal_prints_progress_lines(tiny_llama_dir, tmp_path_factory, tmp_path, capsys):
    from evaluation.eval_runs import copy_run, trained_tiny_run
    from lorakit.cli.app import run_cli

    run = copy_run(trained_tiny_run(tiny_llama_dir, tmp_path_factory.getbasetemp() / "eval-workspace"), tmp_path / "run")
    argv = ["eval", str(run), "--safety", "--skip-quality", "--limit", "1", "--max-new-tokens", "2", "--no-report"]
    assert run_cli(argv) == 0
    err = capsys.readouterr().err
    assert "answering safety: 0/36" in err and "answering safety: 36/36" in err and "answers/s" in err
