"""Issue 23: the ops one decoding step of a loaded run dispatches (bench/lib/step_ops.py's count, by source), and the
inference LoRA forward that load_run installs (model/inference_lora.py): 4 ops and 2 kernels fewer per adapted
layer, nothing else changed, the same greedy answers on every decoding path, and LORAKIT_DISABLE restores peft's."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

from evaluation.eval_runs import trained_tiny_run
from lorakit.data.records import Message
from lorakit.inference.generate import GenerationSettings, generate_answer, generate_answers, load_run, stream_answer
from lorakit.inference.running_batch import RowRequest, RunningBatch
from lorakit.model.inference_lora import use_inference_lora

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from lib.step_ops import count_ops  # noqa: E402

GREEDY = GenerationSettings(max_new_tokens=6, temperature=0.0, repetition_penalty=1.1)
QUESTIONS = [(Message("user", "What is insulin?"),), (Message("user", "What do kidneys do all day long?"),),
             (Message("user", "Fever?"),), (Message("user", "Why does a cough linger after a cold?"),)]
LORA_LAYERS = 8  # qkv_proj, o_proj, gate_up_proj, down_proj in each of the tiny Phi3's 2 layers


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
