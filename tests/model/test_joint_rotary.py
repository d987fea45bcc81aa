"""model/joint_rotary.py: q and k rotated as one tensor are bitwise transformers' (the rotation alone, and the q, k,
v that SDPA receives, the KV cache and the logits of a whole prefill + decoding, fp32 and bf16), with the layout the
docstring claims, and transformers' forward runs wherever it should (autograd, training, liger's RoPE, the switch)."""

from __future__ import annotations

from unittest.mock import patch

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.models.phi3 import modeling_phi3

from lorakit.model import joint_rotary
from lorakit.model.joint_rotary import rotate_query_and_key, use_joint_rotary
from lorakit.model.transformers_source_guard import changed_functions

# Two left-padded rows of 5 tokens: the prefill, then greedy decoding steps on the KV cache.
IDS = torch.tensor([[1, 17, 230, 4051, 99], [0, 0, 5, 802, 3001]])
MASK = (IDS != 0).long()
LAYERS = 2


def _model(tiny_phi3_dir, dtype=torch.float32, joint: bool = True):
    model = AutoModelForCausalLM.from_pretrained(tiny_phi3_dir, dtype=dtype).eval()
    if joint:
        assert use_joint_rotary(model) == LAYERS
    return model


def _decode(model, steps: int = 2):
    """Logits of the prefill and of `steps` greedy steps, each SDPA call's (q, k, v, q.stride(), k.stride()) and the
    final KV cache's keys and values."""
    sdpa, calls = torch.nn.functional.scaled_dot_product_attention, []

    def recording(query, key, value, *args, **kwargs):
        calls.append((query.clone(), key.clone(), value.clone(), query.stride(), key.stride()))
        return sdpa(query, key, value, *args, **kwargs)

    logits, ids, mask, cache = [], IDS, MASK, None
    with patch.object(torch.nn.functional, "scaled_dot_product_attention", recording), torch.no_grad():
        for _ in range(steps + 1):
            out = model(input_ids=ids, attention_mask=mask, cache=cache, use_cache=True)
            logits.append(out.logits[:, -1])
            cache, ids = out.cache, out.logits[:, -1:].argmax(-1)
            mask = torch.cat([mask, torch.ones_like(ids)], dim=1)
    return logits, calls, [(layer.keys, layer.values) for layer in cache.layers]


def _equal(first, second) -> bool:
    return len(first) == len(second) and all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("rows,tokens", [(1, 1), (8, 1), (2, 37)])
def test_rotation_equals_transformers_bit_for_bit(dtype, rows, tokens):
    heads, kv_heads, head_dim, rotary_dim = 24, 8, 128, 96  # Phi-4-mini (partial rotary 0.75)
    generator = torch.Generator().manual_seed(rows * tokens)
    qkv = torch.randn(rows, tokens, (heads + 2 * kv_heads) * head_dim, generator=generator).to(dtype)
    angles = torch.rand(rows, tokens, rotary_dim // 2, generator=generator) * 100
    cos, sin = torch.cat((angles, angles), -1).cos().to(dtype), torch.cat((angles, angles), -1).sin().to(dtype)
    query = qkv[..., :heads * head_dim].view(rows, tokens, -1, head_dim).transpose(1, 2)
    key = qkv[..., heads * head_dim:(heads + kv_heads) * head_dim].view(rows, tokens, -1, head_dim).transpose(1, 2)
    expected = modeling_phi3.apply_rotary_pos_emb(query, key, cos, sin)
    got = rotate_query_and_key(qkv, heads, kv_heads, head_dim, cos, sin)
    assert _equal(got, expected)
    # The layout the docstring promises: each row laid out as transformers' contiguous q and k, rows further apart.
    for joint, reference in zip(got, expected):
        assert joint.stride()[1:] == reference.stride()[1:] == (tokens * head_dim, head_dim, 1)
        assert joint.stride(0) == (heads + kv_heads) * tokens * head_dim
    assert got[1].data_ptr() - got[0].data_ptr() == heads * tokens * head_dim * qkv.element_size()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_sdpa_inputs_kv_cache_and_logits_are_bitwise_transformers(tiny_phi3_dir, dtype):
    logits, calls, cache = _decode(_model(tiny_phi3_dir, dtype))
    expected_logits, expected_calls, expected_cache = _decode(_model(tiny_phi3_dir, dtype, joint=False))
    assert len(calls) == len(expected_calls) == 3 * LAYERS
    for call, expected in zip(calls, expected_calls):
        assert _equal(call[:3], expected[:3])  # q, k, v as SDPA receives them (after transformers' GQA handling)
        assert call[3][1:] == expected[3][1:] and call[3][-1] == 1  # q: only the stride between rows differs
        assert call[4] == expected[4]  # k as the KV cache's torch.cat lays it out, as before
    assert all(_equal(layer, expected) for layer, expected in zip(cache, expected_cache))
    assert _equal(logits, expected_logits)


def _rotations(monkeypatch) -> list[int]:
    """Counts the calls of the joint rotation (the forward looks it up at call time)."""
    calls = []

    def counted(*args):
        calls.append(1)
        return rotate_query_and_key(*args)

    monkeypatch.setattr(joint_rotary, "rotate_query_and_key", counted)
    return calls


def test_autograd_and_training_mode_run_transformers_forward(tiny_phi3_dir, monkeypatch):
    model, reference = _model(tiny_phi3_dir), _model(tiny_phi3_dir, joint=False)
    rotations = _rotations(monkeypatch)
    loss = model(input_ids=IDS, attention_mask=MASK, labels=IDS).loss
    loss.backward()
    assert rotations == []
    reference_loss = reference(input_ids=IDS, attention_mask=MASK, labels=IDS).loss
    reference_loss.backward()
    assert torch.equal(loss, reference_loss)
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(model.parameters(), reference.parameters()))
    model.train()
    with torch.no_grad():
        model(input_ids=IDS, attention_mask=MASK)
    assert rotations == []
    model.eval()
    with torch.no_grad():
        model(input_ids=IDS, attention_mask=MASK)
    assert rotations == [1] * LAYERS


def liger_rope_stand_in(q, k, cos, sin, unsqueeze_dim=1):
    liger_rope_stand_in.calls += 1
    return ROPE(q, k, cos, sin, unsqueeze_dim)


ROPE = modeling_phi3.apply_rotary_pos_emb


def test_a_replaced_module_rope_keeps_running(tiny_phi3_dir, monkeypatch):
    """liger replaces modeling_phi3.apply_rotary_pos_emb module-wide (training on CUDA): a model loaded after that
    keeps running it, not the joint rotation."""
    model = _model(tiny_phi3_dir)
    rotations = _rotations(monkeypatch)
    liger_rope_stand_in.calls = 0
    monkeypatch.setattr(modeling_phi3, "apply_rotary_pos_emb", liger_rope_stand_in)
    with torch.no_grad():
        model(input_ids=IDS, attention_mask=MASK)
    assert (rotations, liger_rope_stand_in.calls) == ([], LAYERS)


def test_switch_and_other_architectures_keep_transformers_forward(tiny_phi3_dir, tiny_llama_dir, monkeypatch):
    monkeypatch.setenv("LORAKIT_DISABLE", "joint_rotary")
    model = _model(tiny_phi3_dir, joint=False)
    assert use_joint_rotary(model) == 0 and "forward" not in vars(model.model.layers[0].self_attn)
    monkeypatch.setenv("LORAKIT_DISABLE", "")
    assert use_joint_rotary(model) == LAYERS and use_joint_rotary(model) == 0  # never twice
    llama = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    assert use_joint_rotary(llama) == 0
    assert not any("forward" in vars(module) for module in llama.modules())


def test_a_transformers_whose_phi3_attention_reads_differently_keeps_its_own_forward(tiny_phi3_dir, monkeypatch,
                                                                                       caplog):
    """pyproject.toml sets no upper bound on transformers: where its Phi3Attention.forward (or the rotation) is not
    the copied text, load_run must not run the 5.25 copy. The installed one is (the tests above switch), also where
    liger has replaced the module's apply_rotary_pos_emb (its RoPE keeps running by the forward's own check)."""
    import inspect

    source, copied = inspect.getsource(modeling_phi3), joint_rotary.COPIED_SOURCE.sha256
    assert changed_functions(source, copied) == () and joint_rotary.COPIED_SOURCE.changed() == ()
    newer = source.replace("        cos, sin = position_embeddings\n",
                           "        cos, sin = position_embeddings\n        query_states = self.q_norm(query_states)\n")
    assert newer.count("q_norm") == 1 and changed_functions(newer, copied) == ("Phi3Attention.forward",)
    assert changed_functions(source.replace("def rotate_half(", "def _rotate_half("), copied) == ("rotate_half",)
    model = _model(tiny_phi3_dir, joint=False)
    monkeypatch.setitem(copied, "rotate_half", "0" * 16)  # as a transformers whose rotate_half reads otherwise
    monkeypatch.setattr(modeling_phi3, "apply_rotary_pos_emb", liger_rope_stand_in)  # not read: the file is
    with caplog.at_level("WARNING", logger="lorakit.model.joint_rotary"):
        assert use_joint_rotary(model) == 0
    assert not any("forward" in vars(module) for module in model.modules())
    assert [r.getMessage() for r in caplog.records] == [
        f"joint rotary off: transformers {__import__('transformers').__version__}'s rotate_half differ from "
        "the 5.25.0 text model/joint_rotary.py copies; the model keeps transformers' own attention forward"]
    monkeypatch.undo()
    monkeypatch.setattr(modeling_phi3, "apply_rotary_pos_emb", liger_rope_stand_in)
    assert use_joint_rotary(model) == LAYERS


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_without_a_cache_and_with_eager_attention_the_logits_are_bitwise_transformers(tiny_phi3_dir, implementation):
    """Eval loss and any forward with use_cache=False hand the attention k as a strided slice (no cache cat), and the
    eager attention reads q and k through matmul: the logits stay transformers' to the bit."""
    def logits(joint: bool, use_cache: bool):
        model = AutoModelForCausalLM.from_pretrained(tiny_phi3_dir, dtype=torch.bfloat16,
                                                     attn_implementation=implementation).eval()
        if joint:
            assert use_joint_rotary(model) == LAYERS
        with torch.no_grad():
            return model(input_ids=IDS, attention_mask=MASK, use_cache=use_cache).logits

    for use_cache in (False, True):
        assert torch.equal(logits(True, use_cache), logits(False, use_cache))


def test_generate_with_a_static_cache_is_bitwise_transformers(tiny_phi3_dir):
    """lorakit's decoding keeps a DynamicCache; a StaticCache (transformers' generate, cache_implementation="static")
    writes k in place at the cache positions the forward passes on in its kwargs, as transformers' forward does."""
    def scores(joint: bool):
        model = _model(tiny_phi3_dir, joint=joint)
        out = model.generate(input_ids=IDS, attention_mask=MASK, max_new_tokens=3, do_sample=False,
                             cache_implementation="static", output_logits=True, return_dict_in_generate=True,
                             pad_token_id=0)
        return out.sequences, out.logits

    (ids, logits), (expected_ids, expected_logits) = scores(True), scores(False)
    assert torch.equal(ids, expected_ids) and _equal(logits, expected_logits) and len(logits) == 3
