"""GGUF export: transformers' GGUF loader reads the file back, its logits match base + adapter within the
quantization's tolerance, the metadata carries template, stop tokens and system prompt, and the
end-of-turn token stops generation."""

from __future__ import annotations

import json

import gguf
import pytest
import torch

from export.export_runs import tiny_run
from export.gguf_parse_cache import gguf_parsed_once
from export.jinja_render import render_jinja_template
from lorakit.export.fidelity import MIN_AGREEMENT
from lorakit.export.run_export import ExportRequest, export_run
from lorakit.run.source import read_finished_run

PROMPT = torch.tensor([[1, 200, 300, 400, 500, 600, 700, 2, 1, 900]])
# Largest |logit difference| to base + adapter (fp32) on the tiny models (initializer_range 0.2, logits up
# to ~5), measured: f16 0.005-0.007, q8_0 0.17-0.19, q4_0 1.8-2.5. Per weight, q8_0 round-trips within
# 0.55% (rms, relative); the tiny random models amplify that more than trained ones do (SmolLM2: see the
# slow test).
LOGIT_ATOL = {"f16": 0.02, "q8_0": 0.4, "q4_0": 4.0}


@pytest.fixture(autouse=True)
def _parse_each_gguf_once():
    """Each file is read by several loaders; parsing its vocabulary once per file saves ~70% of these tests."""
    with gguf_parsed_once() as cache:
        yield cache


def _reference(run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(run.config.model.name, dtype=torch.float32)
    return PeftModel.from_pretrained(base, run.adapter_dir).eval()


def load_gguf_model(folder, name: str, arch: str):
    """transformers' GGUF loader. Its phi3 mapping ignores rope.dimension_count (ggml.py maps it to None),
    so a Phi-4-style partial rotary factor has to be given back to it; llama.cpp reads the key itself."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if arch == "phi3":
        rope_dims = gguf.GGUFReader(folder / name).get_field("phi3.rope.dimension_count").contents()
        config.rope_parameters["partial_rotary_factor"] = rope_dims / (config.hidden_size // config.num_attention_heads)
    return AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, config=config, dtype=torch.float32).eval()


@pytest.mark.parametrize("arch", ["llama", "phi3"])
def test_gguf_reads_back_with_matching_logits(arch, request, tmp_path_factory, tmp_path):
    model_dir = request.getfixturevalue(f"tiny_{arch}_dir")
    run_dir = tiny_run(model_dir, tmp_path_factory.mktemp(f"train-{arch}"), tmp_path / "run")
    run = read_finished_run(run_dir)
    with torch.no_grad():
        expected = _reference(run)(PROMPT).logits
    for quant, atol in LOGIT_ATOL.items():
        result = export_run(run_dir, ExportRequest("gguf", output=tmp_path / quant, quant=quant))
        name = f"run-{quant}.gguf"
        assert result.files == sorted(["README.md", name, "lorakit_export.json"])
        with torch.no_grad():
            got = load_gguf_model(result.output, name, arch)(PROMPT).logits
        difference = (got - expected).abs().max().item()
        assert difference < atol, f"{quant}: {difference}"
        fidelity = json.loads((result.output / "lorakit_export.json").read_text())["fidelity"]
        assert (fidelity["warning"] is None) == (fidelity["token_agreement"] >= MIN_AGREEMENT[quant])
        assert fidelity["max_logit_diff"] > 0
        if quant == "f16":  # the tiny random models amplify quantization error (q8_0 measured 95.3%, at its threshold)
            assert fidelity["token_agreement"] >= MIN_AGREEMENT["f16"] and fidelity["max_logit_diff"] < atol
        if quant == "f16":
            assert difference < LOGIT_ATOL["q8_0"] / 10


def test_gguf_metadata_and_end_of_turn_stop(tiny_llama_dir, tmp_path_factory, tmp_path):
    from transformers import AutoTokenizer

    run_dir = tiny_run(tiny_llama_dir, tmp_path_factory.mktemp("train-llama"), tmp_path / "run")
    run = read_finished_run(run_dir)
    result = export_run(run_dir, ExportRequest("gguf", quant="q8_0"))
    path = result.output / "run-q8_0.gguf"
    reader = gguf.GGUFReader(path)
    field = lambda key: reader.get_field(key).contents()  # noqa: E731
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert field("general.architecture") == "llama"
    assert field("tokenizer.ggml.model") == "gpt2"
    # The template's default system prompt is the run's: plain jinja2 (llama-cpp-python, LM Studio) renders
    # a request without one as training rendered every conversation.
    template = field("tokenizer.chat_template")
    question = [{"role": "user", "content": "What is a fever?"}]
    with_system = [{"role": "system", "content": run.system_prompt}, *question]
    assert render_jinja_template(template, question) == render_jinja_template(tokenizer.chat_template, with_system)
    assert field("general.sampling.penalty_last_n") == run.config.inference.repeat_last_n
    assert field("tokenizer.ggml.eot_token_id") == eot == field("tokenizer.ggml.eos_token_id")
    assert field("lorakit.system_prompt") == run.system_prompt == "Be careful."
    assert field("lorakit.data_sha256") == run.manifest["data"]["sha256"]
    assert len(field("tokenizer.ggml.tokens")) == 49152 and field("tokenizer.ggml.merges")[0] == "Ġ t"
    assert {t.name: t.tensor_type.name for t in reader.tensors}["blk.0.attn_q.weight"] == "Q8_0"
    # The loader's tokenizer is the run's tokenizer, and generation stops at the end-of-turn token.
    loaded = AutoTokenizer.from_pretrained(result.output, gguf_file=path.name)
    text = "<|im_start|>user\nWhat is a fever?<|im_end|>\n"
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    model = load_gguf_model(result.output, path.name, "llama")
    assert model.generation_config.eos_token_id == eot
    ids = torch.tensor([tokenizer("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")["input_ids"]])
    free = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=eot,
                          sequence_bias={(eot,): -100.0})
    assert free.shape[1] == ids.shape[1] + 6  # without the end-of-turn token it runs to max_new_tokens
    stopped = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=eot,
                             sequence_bias={(eot,): 100.0})
    assert stopped[0, ids.shape[1]:].tolist() == [eot]
