"""Issue 4, point 8: random YAML configs, `--set` overrides and command lines end in success or in a
validation message with exit 2, never in a traceback.

The slow library calls behind the commands (training, model loading) are replaced by stubs that accept
whatever config reached them: what is fuzzed is everything before them (YAML, overrides, validation,
option parsing, path checks), which is where user input arrives. Values that validate but could break the
step itself (seed, numeric settings) are fuzzed through a real training step in test_fuzz_real_step.py.
"""

from __future__ import annotations

import itertools
import os
import string
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lorakit.cli.app import run_cli
from lorakit.config import (
    DataConfig,
    EvalConfig,
    InferenceConfig,
    LoraSettings,
    ModelConfig,
    RunConfig,
    TrainingConfig,
)

SECTIONS = {"model": ModelConfig, "lora": LoraSettings, "training": TrainingConfig, "data": DataConfig,
            "inference": InferenceConfig, "eval": EvalConfig}
TOP_LEVEL = [name for name in RunConfig.model_fields if name not in SECTIONS]

SPECIAL_TEXT = st.sampled_from([
    "", " ", "auto", "all-linear", "nf4", "cosine", "bf16", "fp16", "2e-4", "1e400", "-1", "0", ".nan", "true",
    "${output_dir}", "${model_name}/x", "${nope}", "${", "\x00", "\t", "a\nb", "~", "/", "..", "é", "\u202e",
    "owner/name", "x" * 300, "[1, 2", "{a: 1}", "- a\n- b", "!!python/object:os.system", "*alias", "&anchor x",
])
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**6), 10**12), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20), SPECIAL_TEXT,
)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                      max_leaves=6)


def _section(model) -> st.SearchStrategy:
    keys = st.sampled_from(sorted(model.model_fields) + ["bogus_key", "max_stepz"])
    return st.dictionaries(keys, VALUES, max_size=6) | VALUES


CONFIGS = st.dictionaries(
    st.sampled_from(TOP_LEVEL + sorted(SECTIONS) + ["extra_section"]),
    st.deferred(lambda: st.one_of(*[_section(m) for m in SECTIONS.values()], VALUES)),
    max_size=8,
)
# Valid-looking configs, so that deep combinations are reached as well as top-level rejections.
NEAR_VALID = st.builds(
    lambda training, model, lora, extra: {
        "output_dir": "runs/fuzz", "data": {"train_file": "data.jsonl"},
        "training": training, "model": model, "lora": lora, **extra,
    },
    st.dictionaries(st.sampled_from(sorted(TrainingConfig.model_fields)), SCALARS, max_size=4),
    st.dictionaries(st.sampled_from(sorted(ModelConfig.model_fields)), SCALARS, max_size=3),
    st.dictionaries(st.sampled_from(sorted(LoraSettings.model_fields)), SCALARS | st.lists(SCALARS, max_size=3), max_size=3),
    st.dictionaries(st.sampled_from(["mode", "seed", "inference", "eval"]), VALUES, max_size=2),
)
KEYS = [f"{section}.{key}" for section, model in SECTIONS.items() for key in model.model_fields] + TOP_LEVEL
OVERRIDES = st.lists(
    st.one_of(
        st.builds(lambda key, value: f"{key}={value}", st.sampled_from(KEYS + ["training", "a.b.c", "", "."]),
                  SPECIAL_TEXT | st.text(max_size=12)),
        st.text(max_size=20),
    ),
    max_size=4,
)


@pytest.fixture
def stubs(monkeypatch):
    """Replace the library calls behind the commands with stubs that only record the config they got."""
    from lorakit.cli import chat as chat_cli
    from lorakit.plan import run_plan
    from lorakit.training import loop

    reached = []

    def fake_train(config, *, resume=False, overwrite=False, reporter=None):
        reached.append(config)
        return loop.TrainResult(Path(config.output_dir), Path(config.output_dir) / "final",
                                config.training.max_steps, False, {})

    tiny_model_config = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                         "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000,
                         "max_position_embeddings": 2048, "tie_word_embeddings": True}
    monkeypatch.setattr(loop, "train", fake_train)
    monkeypatch.setattr(chat_cli, "answer_once", lambda *a, **k: None)
    monkeypatch.setattr(run_plan, "read_model_config_json", lambda model: dict(tiny_model_config))
    return reached


_counter = itertools.count()
EXAMPLES = int(os.environ.get("LORAKIT_FUZZ_EXAMPLES", "150"))  # raise it for a long local fuzzing session


def _assert_clean_outcome(code: int, out: str, err: str, argv: list[str]) -> None:
    assert "Traceback" not in out + err, (argv, err)
    assert code in (0, 2), (code, argv, err)
    if code == 2:  # a message, or (a bare `lorakit` / `lorakit data`) the usage text
        assert "error" in err.lower() or "Usage:" in out + err, (argv, out, err)


def _run(capsys, argv: list[str]) -> None:
    capsys.readouterr()
    code = run_cli(argv)  # anything but a LorakitError or a usage error escapes run_cli and fails the test
    captured = capsys.readouterr()
    _assert_clean_outcome(code, captured.out, captured.err, argv)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=CONFIGS | NEAR_VALID, overrides=OVERRIDES)
def test_input_robustness_random_yaml_configs_and_overrides(stubs, tmp_path, capsys, config, overrides):
    path = tmp_path / f"config-{next(_counter)}.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    argv = ["train", str(path)] + [arg for item in overrides for arg in ("--set", item)]
    _run(capsys, argv)
    _run(capsys, ["plan", str(path), "--gpu-memory", "8GB"] + argv[2:])


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200) | st.lists(st.sampled_from([
    "model:", "  name: x", "training:", "\tmax_steps: 3", "data: {train_file: a.jsonl}", "- 1", "? a", ": b",
    "key: [1, 2", "a: &x 1", "b: *x", "c: *missing", "!!binary AAAA", "%YAML 1.2", "---", "...", "model: *x",
    "training: {max_steps: 1e400}", "lora: {r: .inf}", "seed: 0x10", "output_dir: '\\0'",
]), max_size=8).map("\n".join))
def test_input_robustness_random_yaml_text(stubs, tmp_path, capsys, text):
    path = tmp_path / f"config-{next(_counter)}.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    _run(capsys, ["train", str(path)])


ARG_TEXT = st.text(alphabet=string.printable.replace("\x0b", "").replace("\x0c", "") + "é→", max_size=12)


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("argv")
    (root / "empty-dir").mkdir()
    (root / "file.txt").write_text("not a config\n")
    (root / "config.yaml").write_text(yaml.safe_dump({"output_dir": str(root / "run"), "data": {"train_file": "d.jsonl"}}))
    return [str(root / "empty-dir"), str(root / "file.txt"), str(root / "config.yaml"), str(root / "missing"),
            str(root / "missing" / "deeper"), str(root / "out.html")]


OPTIONS = {
    "train": ["--set", "--resume", "--overwrite", "--allow-phi", "--skip-invalid", "--allow-pickle", "--help"],
    "chat": ["--question", "-q", "--max-new-tokens", "--temperature", "--help"],
    "eval": ["--safety", "--skip-quality", "--limit", "--probes", "--max-new-tokens", "--report", "--no-report",
             "--fail-on-worse", "--help"],
    "plan": ["--gpu-memory", "--set", "--show", "--help"],
    "report": ["--output", "-o", "--help"],
}


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_input_robustness_random_command_lines(stubs, paths, capsys, data):
    command = data.draw(st.sampled_from(sorted(OPTIONS) + ["nope", ""]))
    pieces = data.draw(st.lists(st.one_of(
        st.sampled_from(OPTIONS.get(command, ["--help"]) + ["--quiet", "-x", "--", "-"]),
        st.sampled_from(paths), ARG_TEXT,
        st.sampled_from(["0", "-1", "1e9", "nan", "inf", "8GB", "12GiB", "x", "", "training.max_steps=2", "a=b=c"]),
    ), max_size=6))
    _run(capsys, ([command] if command else []) + pieces)


@pytest.fixture
def stop_at_model_loading(monkeypatch):
    """The real `train` up to the model: output folder, lock, staging cleanup; then a sentinel error."""
    from lorakit.errors import CheckpointError
    from lorakit.training import loop

    def build_session(config, reporter):
        raise CheckpointError("reached model loading")

    monkeypatch.setattr(loop, "build_session", build_session)


OUTPUT_NAMES = st.text(min_size=1, max_size=300).filter(lambda name: "/" not in name and name not in (".", ".."))


@settings(max_examples=max(EXAMPLES // 3, 20), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=OUTPUT_NAMES, in_the_way=st.booleans())
def test_input_robustness_output_dir_names_reach_the_real_run_folder_code(stop_at_model_loading, tmp_path, capsys,
                                                                          name, in_the_way):
    root = tmp_path / f"case-{next(_counter)}"
    root.mkdir()
    if in_the_way:
        (root / "blocker").write_text("a file where the run folder should go")
    output_dir = root / "blocker" / name if in_the_way else root / name
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump({"output_dir": str(output_dir), "data": {"train_file": "d.jsonl"}}, allow_unicode=True))
    capsys.readouterr()
    code = run_cli(["train", str(config)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert "reached model loading" in err or "config problem" in err, err
    if in_the_way and "\x00" not in name:
        assert "cannot create the folder" in err and "Not a directory" in err, err


def test_input_robustness_output_dir_problems_are_config_errors(stop_at_model_loading, tmp_path, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    cases = {str(blocker): "a file of that name is in the way", str(tmp_path / ("x" * 300)): "File name too long",
             "/proc/lorakit-run": "No such file or directory"}
    for output_dir, reason in cases.items():
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump({"output_dir": output_dir, "data": {"train_file": "d.jsonl"}}))
        assert run_cli(["train", str(config)]) == 2
        err = capsys.readouterr().err
        assert f"output_dir: cannot create the folder {output_dir} ({reason})" in err and "Traceback" not in err
    config.write_text('output_dir: "runs/a\\0b"\ndata: {train_file: d.jsonl}\n')
    assert run_cli(["train", str(config)]) == 2
    assert "output_dir: contains a NUL character" in capsys.readouterr().err
