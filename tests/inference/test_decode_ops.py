"""Issue 23: the ops one decoding step of a loaded run dispatches (bench/lib/step_ops.py's count, by source), and the
inference forwards that load_run installs: the LoRA layers' (model/inference_lora.py: 4 ops and 2 kernels fewer per
adapted layer) and Phi3's joint rotary (model/joint_rotary.py: 11 ops and 6 kernels fewer per layer); nothing else
changed, the same greedy answers (and, for the rotary, the same logits to the bit) on every decoding path, and
LORAKIT_DISABLE restores the library's forwards. A model trained after a load_run trains as it would without."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from evaluation.eval_runs import trained_tiny_run
from lorakit.data.records import Message
from lorakit.inference import generate
from lorakit.inference.generate import GenerationSettings, generate_answer, generate_answers, load_run, stream_answer
from lorakit.inference.running_batch import RowRequest, RunningBatch
from lorakit.model.inference_lora import use_inference_lora
from lorakit.model.joint_rotary import use_joint_rotary

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from lib.step_ops import count_ops  # noqa: E402

GREEDY = GenerationSettings(max_new_tokens=6, temperature=0.0, repetition_penalty=1.1)
QUESTIONS = [(Message("user", "What is insulin?"),), (Message("user", "What do kidneys do all day long?"),),
             (Message("user", "Fever?"),), (Message("user", "Why does a cough linger after a cold?"),)]
LORA_LAYERS = 8  # qkv_proj, o_proj, gate_up_proj, down_proj in each of the tiny Phi3's 2 layers
LAYERS = 2


@pytest.fixture(scope="module")
def run_dir(tiny_phi3_dir, tmp_path_factory):
    return trained_tiny_run(tiny_phi3_dir, tmp_path_factory.getbasetemp() / "phi3-workspace")


def _step(run):
    """One RunningBatch step of two rows (serve's loop), after a join and two warm-up steps: its op count."""
    batch = RunningBatch(run.model, stop_ids=[], pad_id=0, device=run.device)
    batch.join([RowRequest(0, [1, 5, 7, 9], GREEDY), RowRequest(1, [1, 300, 2000], GREEDY)])
    batch.step()
    batch.step()
    return count_ops(run.model, batch.step)


def _peft_forward_layers(model) -> int:
    return sum(1 for m in model.modules() if hasattr(m, "lora_A") and "forward" not in vars(m))


def test_a_decoding_step_runs_four_ops_and_two_kernels_fewer_per_lora_layer(run_dir, monkeypatch):
    monkeypatch.setenv("LORAKIT_DISABLE", "inference_lora")
    run = load_run(run_dir)
    assert _peft_forward_layers(run.model) == LORA_LAYERS
    before = _step(run)
    monkeypatch.setenv("LORAKIT_DISABLE", "")
    assert use_inference_lora(run.model) == LORA_LAYERS
    after = _step(run)
    # peft: lora_A and lora_B as nn.Linear (t, view, mm, _unsafe_view each), `* scaling`, `+ result`;
    # now: t, view, mm for A, then view, t, addmm_ (alpha = scaling) into the frozen product.
    assert before.by_name - after.by_name == Counter({"aten::_unsafe_view": 2 * LORA_LAYERS, "aten::mm": LORA_LAYERS,
                                                      "aten::mul": LORA_LAYERS, "aten::add": LORA_LAYERS})
    assert after.by_name - before.by_name == Counter({"aten::addmm_": LORA_LAYERS})
    assert (before.by_source["LoRA branch"], after.by_source["LoRA branch"]) == (10 * LORA_LAYERS, 6 * LORA_LAYERS)
    assert (before.kernels_by_source["LoRA branch"], after.kernels_by_source["LoRA branch"]) == (4 * LORA_LAYERS,
                                                                                                 2 * LORA_LAYERS)
    assert before.total - after.total == 4 * LORA_LAYERS and before.kernels - after.kernels == 2 * LORA_LAYERS
    others = [source for source in before.by_source if source != "LoRA branch"]
    assert [before.by_source[s] for s in others] == [after.by_source[s] for s in others]
    assert after.by_source["frozen projections"] == 4 * LORA_LAYERS  # the base layers' products, as before


def _answers(run) -> list[tuple[int, ...]]:
    """Greedy answers of every decoding path: model.generate (chat), stream_answer, decode_batch (eval) with the
    tuned model, base and tuned mixed (peft's adapter_names) and the base alone (disable_adapter), RunningBatch."""
    one = tuple(generate_answer(run, QUESTIONS[0], GREEDY)[1])
    ended = []
    "".join(stream_answer(run, QUESTIONS[1], GREEDY, on_end=ended.append))
    tuned = [a.token_ids for a in generate_answers(run, QUESTIONS, GREEDY)]
    mixed = [a.token_ids for a in generate_answers(run, QUESTIONS, GREEDY, models=["tuned", "base"] * 2)]
    base = [a.token_ids for a in generate_answers(run, QUESTIONS, GREEDY, models=["base"] * 4)]
    batch = RunningBatch(run.model, stop_ids=[], pad_id=0, device=run.device)
    served = [new.token for new in batch.join([RowRequest(0, [1, 2, 3], GREEDY)])]
    served += [new.token for new in batch.step()]
    return [one, ended[0].token_ids, *tuned, *mixed, *base, tuple(served)]


def test_greedy_answers_are_the_same_on_every_decoding_path(run_dir, monkeypatch):
    run = load_run(run_dir)
    assert _peft_forward_layers(run.model) == 0, "load_run installs the inference forward on every LoRA layer"
    fused = _answers(run)
    monkeypatch.setenv("LORAKIT_DISABLE", "inference_lora")
    peft = load_run(run_dir)
    assert _peft_forward_layers(peft.model) == LORA_LAYERS
    assert _answers(peft) == fused
    assert fused[2:6] != fused[10:14], "the adapter changes the answers, so a mix-up of base and tuned would show"


def _attention_forward_layers(model) -> int:
    return sum(1 for m in model.modules() if type(m).__name__ == "Phi3Attention" and "forward" in vars(m))


def test_a_decoding_step_runs_eleven_ops_and_six_kernels_fewer_per_layer_with_the_joint_rotary(run_dir, monkeypatch):
    monkeypatch.setenv("LORAKIT_DISABLE", "joint_rotary")
    run = load_run(run_dir)
    assert _attention_forward_layers(run.model) == 0
    before = _step(run)
    monkeypatch.setenv("LORAKIT_DISABLE", "")
    assert use_joint_rotary(run.model) == LAYERS
    after = _step(run)
    # q and k each: mul cos, neg + cat (rotate_half), mul sin, add, cat with the unrotated part -> once for both;
    # the slices of q_rot/q_pass/k_rot/k_pass, of rotate_half's halves and q's own view/transpose go with them.
    assert before.by_name - after.by_name == Counter({
        "aten::slice": 3 * LAYERS, "aten::mul": 2 * LAYERS, "aten::cat": 2 * LAYERS, "aten::add": LAYERS,
        "aten::neg": LAYERS, "aten::view": LAYERS, "aten::transpose": LAYERS})
    assert after.by_name - before.by_name == Counter()
    assert before.kernels - after.kernels == 6 * LAYERS and before.total - after.total == 11 * LAYERS
    assert before.kernels_by_source["rotary"] - after.kernels_by_source["rotary"] == 6 * LAYERS
    assert after.kernels_by_source["attention (q/k/v split, reshapes)"] == 0  # its views only: no kernel
    others = [s for s in before.by_source if s not in ("rotary", "attention (q/k/v split, reshapes)")]
    assert [before.by_source[s] for s in others] == [after.by_source[s] for s in others]


def _answers_and_logits(run) -> tuple[list, list]:
    """`_answers` of the run, and the logits every forward pass of them computed (the LM head's outputs, in order)."""
    logits = []
    handle = run.model.get_base_model().lm_head.register_forward_hook(lambda m, i, out: logits.append(out.clone()))
    try:
        return _answers(run), logits
    finally:
        handle.remove()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_joint_rotary_gives_the_same_logits_and_answers_on_every_decoding_path(run_dir, monkeypatch, dtype):
    monkeypatch.setattr(generate, "compute_dtype", lambda precision, device: dtype)  # bf16: a GPU's dtype
    run = load_run(run_dir)
    assert _attention_forward_layers(run.model) == LAYERS and run.model.dtype == dtype
    answers, logits = _answers_and_logits(run)
    monkeypatch.setenv("LORAKIT_DISABLE", "joint_rotary")
    transformers_run = load_run(run_dir)
    assert _attention_forward_layers(transformers_run.model) == 0
    expected_answers, expected_logits = _answers_and_logits(transformers_run)
    assert answers == expected_answers
    assert len(logits) == len(expected_logits) > 30
    assert all(torch.equal(a, b) for a, b in zip(logits, expected_logits))


def _losses_and_adapter(run_dir: Path) -> tuple[list, dict]:
    """Every loss a run logged (metrics.jsonl: train_loss, val_loss) and its final adapter's tensors."""
    from safetensors.torch import load_file

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [(r["step"], key, value) for r in records for key, value in r.items() if key.endswith("loss")]
    return losses, load_file(run_dir / "final" / "adapter_model.safetensors")


def test_a_model_trained_after_a_load_run_trains_as_without(run_dir, tiny_phi3_dir, tmp_path):
    """The pipeline trains and evaluates in one process, and so may the studio: the joint rotary lives on the loaded
    model's own attention modules, so a model trained after it gives the same losses and adapter to the bit as the
    run trained before it."""
    from conftest import tiny_run_config
    from lorakit.training.loop import train

    run = load_run(run_dir)
    assert _attention_forward_layers(run.model) == LAYERS
    generate_answer(run, QUESTIONS[0], GREEDY)  # the joint rotation has run in this process
    again = tmp_path / "run"
    train(tiny_run_config(tiny_phi3_dir, run_dir.parent / "qa.jsonl", again))
    losses, adapter = _losses_and_adapter(again)
    expected_losses, expected_adapter = _losses_and_adapter(run_dir)
    assert len(losses) >= 4 and losses == expected_losses
    assert adapter.keys() == expected_adapter.keys()
    assert all(torch.equal(adapter[name], expected_adapter[name]) for name in adapter)
