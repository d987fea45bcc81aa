"""`lorakit plan` on a DPO config plans on the run's own pairs where the data files and the model's tokenizer can be
read (training/planned_pairs.py, the calls `lorakit train` makes), says so, and otherwise keeps the data-free bound
with its reason; a broken pairs file stops it with the error `lorakit train` stops with (exit 2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import PHI4_MINI, QA_PAIRS
from lorakit.cli.app import run_cli
from lorakit.config import load_config
from lorakit.model.named_tokenizer import load_model_tokenizer
from lorakit.plan.run_plan import plan_run, resolve_auto_settings
from lorakit.training.batches import run_pair_layout
from lorakit.training.dataset import prepare_data
from lorakit.training.planned_pairs import read_planned_pairs

TOKENIZER = Path(__file__).resolve().parents[1] / "fixtures" / "smollm2-tokenizer"
DATA_FREE_TOKENS = 4 * 2 * 1024  # 4 pairs of two max_length rows: what the plan counts without data


def _write_pairs(path: Path) -> Path:
    path.write_text("".join(json.dumps({"prompt": q, "chosen": a, "rejected": QA_PAIRS[(i + 1) % len(QA_PAIRS)][1]})
                            + "\n" for i, (q, a) in enumerate(QA_PAIRS)))
    return path


def _write_config(path: Path, model: Path, pairs: Path) -> Path:
    path.write_text(f"model:\n  name: {model}\n  max_length: 1024\n  quantization: nf4\ntraining:\n  method: dpo\n"
                    "  batch_size: 4\n  gradient_checkpointing: auto\n  max_steps: 2\n  gradient_accumulation_steps: 1\n"
                    f"data:\n  train_file: {pairs}\n  validation_split: 0.2\n  test_split: 0.0\n")
    return path


@pytest.fixture
def phi4_folder(tmp_path) -> Path:
    """Phi-4-mini's config.json and a tokenizer, no weights (the plan reads nothing else)."""
    model = tmp_path / "phi4-mini-no-weights"
    shutil.copytree(TOKENIZER, model)
    (model / "config.json").write_text(json.dumps(PHI4_MINI))
    return model


def _line(out: str, start: str) -> str:
    [line] = [line for line in out.splitlines() if line.startswith(start)]
    return line


def test_a_dpo_plan_counts_the_runs_own_pairs_as_train_does(phi4_folder, tmp_path, capsys):
    pairs = _write_pairs(tmp_path / "pairs.jsonl")
    config_path = _write_config(tmp_path / "dpo.yaml", phi4_folder, pairs)
    assert run_cli(["plan", str(config_path), "--gpu-memory", "8GB"]) == 0
    out = capsys.readouterr().out
    train_pairs = len(QA_PAIRS) - round(0.2 * len(QA_PAIRS))
    assert _line(out, "preference pairs:") == (f"preference pairs: planned on {train_pairs} pairs of {pairs} (the run's "
                                               "training split, in its data order)")
    # the plan `lorakit train` makes on the same config (training/session.build_session's calls)
    config = load_config(config_path, [])
    data = prepare_data(config, load_model_tokenizer(config.model))
    layout = run_pair_layout(data.pair_layout, config)
    assert len(layout.positions) == train_pairs
    trained = resolve_auto_settings(config, PHI4_MINI, cuda=True, dtype_bytes=2, nf4_available=True,
                                    memory_bytes=8 * 2**30, longest_example=data.longest_example, pairs=layout)
    positions = layout.micro_batch(4)[0]  # the larger of the run's 2 micro-batches of 4 pairs
    assert positions < layout.micro_batch_any_order(4)[0] < DATA_FREE_TOKENS  # not the 4 largest: the run's order
    assert _line(out, "plan:") == (f"plan: nf4, micro-batch 4 ({positions:,} tokens), checkpointing "
                                   f"{trained.plan.checkpointing_text}")


def test_a_missing_pairs_file_keeps_the_data_free_bound(phi4_folder, tmp_path, capsys):
    missing = tmp_path / "not-yet.jsonl"
    assert run_cli(["plan", str(_write_config(tmp_path / "dpo.yaml", phi4_folder, missing)), "--gpu-memory", "8GB"]) == 0
    out = capsys.readouterr().out
    assert _line(out, "preference pairs:") == f"preference pairs: data-free bound: {missing} not read (no such file)"
    assert _line(out, "plan:").startswith(f"plan: nf4, micro-batch 4 ({DATA_FREE_TOKENS:,} tokens), checkpointing ")


def test_a_model_folder_without_a_tokenizer_keeps_the_data_free_bound(tmp_path, capsys):
    model = tmp_path / "config-only"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(PHI4_MINI))
    pairs = _write_pairs(tmp_path / "pairs.jsonl")
    assert run_cli(["plan", str(_write_config(tmp_path / "dpo.yaml", model, pairs)), "--gpu-memory", "8GB"]) == 0
    assert _line(capsys.readouterr().out, "preference pairs:") == (
        f"preference pairs: data-free bound: {pairs} not read (no tokenizer to render it: model.name: {model} holds no "
        "tokenizer (no tokenizer.json or tokenizer_config.json).)")


def test_a_broken_pairs_file_stops_plan_with_trains_error(tiny_llama_dir, tmp_path, capsys):
    """Line 2 has no rejected answer: `lorakit plan` exits 2 with the file:line:field message `lorakit train` gives,
    saying that the plan stopped."""
    pairs = tmp_path / "broken.jsonl"
    rows = [{"prompt": "What is insulin?", "chosen": "A hormone.", "rejected": "A bone."},
            {"prompt": "What is anemia?", "chosen": "Too few red cells."}]
    pairs.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config_path = _write_config(tmp_path / "dpo.yaml", tiny_llama_dir, pairs)
    with open(config_path, "a") as handle:
        handle.write(f"output_dir: {tmp_path / 'run'}\n")
    assert run_cli(["plan", str(config_path), "--gpu-memory", "8GB"]) == 2
    planned = capsys.readouterr().err
    assert run_cli(["train", str(config_path)]) == 2
    trained = capsys.readouterr().err
    assert f"{pairs}:2" in planned and "rejected" in planned
    # the same error, naming the command that stopped: plan's says plan stopped (not "training did not start")
    assert "1 problem in the data; `lorakit plan` stopped, and `lorakit train` would not start:" in planned
    assert "did not start:" not in planned
    assert planned.strip().replace("`lorakit plan` stopped, and `lorakit train` would not start",
                                   "preference training did not start") in trained


def test_a_gguf_model_is_planned_on_its_pairs_only_once_converted(tmp_path, monkeypatch):
    """The tokenizer of a GGUF (the embedded model's too) comes from its safetensors conversion, which loads and
    writes every weight: `lorakit plan` never converts (45 s and 0.5 GB for the embedded model); it keeps the
    data-free bound until `lorakit train` has converted the file, then plans on the pairs."""
    from lorakit.model import gguf_cache

    monkeypatch.setenv("LORAKIT_CACHE_DIR", str(tmp_path / "cache"))
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF not parsed: the plan must not read past the cache key")
    pairs = _write_pairs(tmp_path / "pairs.jsonl")
    config = load_config(_write_config(tmp_path / "dpo.yaml", gguf, pairs), [])
    planned = read_planned_pairs(config)
    assert (planned.layout, planned.note) == (None, (
        f"data-free bound: {pairs} not read (no tokenizer to render it: model.name: model.gguf is not converted to "
        "safetensors yet (`lorakit train` converts it once; the plan converts no weights))"))
    assert not (tmp_path / "cache").exists()
    converted = gguf_cache._conversion_dir(gguf)  # what `lorakit train` leaves: weights and tokenizer
    shutil.copytree(TOKENIZER, converted)
    (converted / "model.safetensors").write_bytes(b"")
    planned = read_planned_pairs(config)
    assert planned.note.startswith(f"planned on {len(planned.layout.positions)} pairs of {pairs}")


def test_an_auto_micro_batch_is_capped_at_the_runs_training_pairs(phi4_folder, tmp_path, capsys):
    """10 training pairs: `lorakit plan` with batch_size auto says micro-batch 10 where the data-free plan takes more
    (pairs that do not exist would be planned for), and counts the memory of those 10 pairs."""
    pairs = _write_pairs(tmp_path / "pairs.jsonl")
    config_path = _write_config(tmp_path / "dpo.yaml", phi4_folder, pairs)
    config_path.write_text(config_path.read_text().replace("batch_size: 4", "batch_size: auto"))
    train_pairs = len(QA_PAIRS) - round(0.2 * len(QA_PAIRS))
    planned = read_planned_pairs(load_config(config_path, []))
    uncapped, _, _ = plan_run(load_config(config_path, []), 8 * 2**30, pairs=planned.layout,
                              longest_example=planned.longest_example)
    assert (planned.data_rows, uncapped.micro_batch) == (train_pairs, 16)
    assert run_cli(["plan", str(config_path), "--gpu-memory", "8GB"]) == 0
    positions = planned.layout.micro_batch(train_pairs)[0]
    assert _line(capsys.readouterr().out, "plan:").startswith(
        f"plan: nf4, micro-batch {train_pairs} ({positions:,} tokens), checkpointing ")
