"""Merged export: plain transformers loads it, its logits equal base + adapter, greedy generation matches."""

from __future__ import annotations

import json

import pytest
import torch

from export.export_runs import tiny_run
from lorakit.export.fidelity import fidelity_questions
from lorakit.export.merge import BF16_NOTE, DEQUANTIZED_NOTE, load_base_for_merge, merge_run, save_dtype
from lorakit.export.run_export import ExportRequest, export_run
from lorakit.run.source import read_finished_run

PROMPT = torch.tensor([[1, 200, 300, 400, 500, 600, 700, 2, 1, 900]])
# The merged folder stores float16 weights (--dtype auto; bfloat16 before issue 25 gave 0.046 on the tiny
# models, whose logits reach ~5); fp32 merge in memory vs base + adapter: below 1e-5.
FP16_LOGIT_ATOL = 0.02  # measured 0.0076 (llama)
FP32_MERGE_ATOL = 1e-4


def _base_plus_adapter(run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(run.config.model.name, dtype=torch.float32)
    return PeftModel.from_pretrained(base, run.adapter_dir).eval()


def _greedy(model, steps: int = 8) -> list[int]:
    out = model.generate(PROMPT, attention_mask=torch.ones_like(PROMPT), max_new_tokens=steps, do_sample=False,
                         eos_token_id=None, pad_token_id=0)
    return out[0, PROMPT.shape[1]:].tolist()


@pytest.mark.parametrize("arch", ["llama", "phi3"])
def test_merged_export_equals_base_plus_adapter(arch, request, tmp_path_factory, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = request.getfixturevalue(f"tiny_{arch}_dir")
    run_dir = tiny_run(model_dir, tmp_path_factory.mktemp(f"train-{arch}"), tmp_path / "run")
    run = read_finished_run(run_dir)
    reference = _base_plus_adapter(run)
    lora_b = [p for n, p in reference.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b), "the adapter must change the model"

    result = export_run(run_dir, ExportRequest("merged"))
    assert result.output == run_dir / "export" / "merged"
    merged = AutoModelForCausalLM.from_pretrained(result.output, dtype=torch.float32)
    assert not any("lora" in name for name in merged.state_dict())
    assert json.loads((result.output / "config.json").read_text())["dtype"] == "float16"
    with torch.no_grad():
        expected, got = reference(PROMPT).logits, merged(PROMPT).logits
        in_memory = merge_run(run, load_base_for_merge(run)).model(PROMPT).logits
    assert (in_memory - expected).abs().max() < FP32_MERGE_ATOL
    print("merged fp16 max |logit difference|", (got - expected).abs().max().item())
    assert (got - expected).abs().max() < FP16_LOGIT_ATOL
    assert (expected - merged.__class__.from_pretrained(model_dir)(PROMPT).logits).abs().max() > 10 * FP16_LOGIT_ATOL
    with torch.no_grad():
        assert _greedy(merged) == _greedy(reference)
    # Tokenizer, chat template (the run's system prompt its default) and an end-of-turn stop travel with the folder.
    tokenizer = AutoTokenizer.from_pretrained(result.output)
    question = [{"role": "user", "content": "hi"}]
    assert tokenizer.apply_chat_template(question, tokenize=False) == AutoTokenizer.from_pretrained(
        model_dir).apply_chat_template([{"role": "system", "content": run.system_prompt}, *question], tokenize=False)
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in merged.generation_config.eos_token_id
    card = (result.output / "README.md").read_text()
    assert "[More Information Needed]" not in card and run.manifest["data"]["sha256"] in card
    # The export measured itself against the run: written, and stated in the card.
    written = json.loads((result.output / "lorakit_export.json").read_text())
    fidelity = written["fidelity"]
    print("merged fidelity", fidelity)
    assert written["dtype"] == "float16" and fidelity["skipped"] is False and fidelity["warning"] is None
    assert fidelity["token_agreement"] >= 0.99 and 0 < fidelity["max_logit_diff"] < FP16_LOGIT_ATOL
    assert fidelity["questions"] == len(fidelity_questions(run, tokenizer)[0]) and fidelity["answer_tokens"] > 0
    assert f"Greedy token agreement with the run: **{fidelity['token_agreement']:.1%}**" in card


def test_qlora_run_is_merged_into_the_dequantized_base_and_says_so(tiny_llama_dir, tmp_path_factory, tmp_path, caplog):
    run_dir = tiny_run(tiny_llama_dir, tmp_path_factory.mktemp("train-llama"), tmp_path / "run")
    manifest_path = run_dir / "final" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["settings"]["quantized_4bit"] = True  # as a CUDA QLoRA run records it
    manifest_path.write_text(json.dumps(manifest))
    result = export_run(run_dir, ExportRequest("merged", dtype="bf16", fidelity=False))
    assert result.notes == [DEQUANTIZED_NOTE, BF16_NOTE]
    assert DEQUANTIZED_NOTE in caplog.text
    written = json.loads((result.output / "lorakit_export.json").read_text())
    assert written["dequantized_base"] is True and written["notes"] == [DEQUANTIZED_NOTE, BF16_NOTE]
    assert written["dtype"] == "bfloat16" and written["fidelity"]["skipped"] is True
    card = (result.output / "README.md").read_text()
    assert "de-quantized base model" in card and "made with `--skip-fidelity`" in card


def test_save_dtype_keeps_the_change_unless_bfloat16_is_asked_for():
    model = torch.nn.Linear(4, 4)
    assert save_dtype(model, "auto") == (torch.float16, [])
    with torch.no_grad():
        model.weight[0, 0] = 40_000.0  # within float16's 65504, but too close to it
    assert save_dtype(model, "auto") == (torch.float32, [])
    assert save_dtype(model, "fp16") == (torch.float16, [])
    assert save_dtype(model, "bf16") == (torch.bfloat16, [BF16_NOTE])


def test_a_train_file_broken_since_training_gives_fixed_questions_in_the_exports_words(tiny_llama_dir,
                                                                                         tmp_path_factory, tmp_path):
    """Export fidelity falls back to its fixed questions when the run's train file no longer reads; the reason it
    gives is about the export's questions, not "training did not start" (a message from another command)."""
    from transformers import AutoTokenizer

    from lorakit.export.fidelity import FIXED_QUESTIONS

    run_dir = tiny_run(tiny_llama_dir, tmp_path_factory.mktemp("train-broken"), tmp_path / "run")
    run = read_finished_run(run_dir)
    train_file = run.config.data.train_files[0]
    with open(train_file, "a", encoding="utf-8") as handle:
        handle.write('{"instruction": "What is a fever?"}\n')
    questions, source = fidelity_questions(run, AutoTokenizer.from_pretrained(tiny_llama_dir))
    assert questions == list(FIXED_QUESTIONS)
    assert source.startswith("fixed questions (") and "; the test questions were not read" in source
    assert "training did not start" not in source
