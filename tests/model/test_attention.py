"""Packed rows are isolated: each example's logits and loss are the same packed as alone (fp32, 1e-5)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, LlamaConfig, Phi3Config

from lorakit.data.masking import IGNORE_INDEX
from lorakit.data.packing import collate_packed
from lorakit.data.render import TokenizedExample
from lorakit.model.attention import VARLEN_ATTENTION, use_varlen_attention, varlen_attention_forward

VOCAB = 49152  # the fixture tokenizer's vocabulary
TINY = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, tie_word_embeddings=True)


def tiny_model(kind: str, attn: str = "sdpa"):
    torch.manual_seed(0)
    config = (Phi3Config(partial_rotary_factor=0.75, **TINY) if kind == "phi3" else LlamaConfig(**TINY))
    config._attn_implementation = attn
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def examples(lengths=(7, 5, 11), seed=1) -> list[TokenizedExample]:
    generator = torch.Generator().manual_seed(seed)
    made = []
    for length in lengths:
        ids = torch.randint(0, VOCAB, (length,), generator=generator).tolist()
        labels = [IGNORE_INDEX] * (length // 2) + ids[length // 2 :]
        made.append(TokenizedExample(ids, labels))
    return made


def example_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss of one example; logits [T, V], labels [T]."""
    return F.cross_entropy(logits[:-1], labels[1:], ignore_index=IGNORE_INDEX)


def test_transformers_position_ids_alone_isolate_only_without_cache_or_mask():
    """The trap this module exists for, measured rather than trusted (transformers 5.x)."""
    model = tiny_model("phi3").train()
    batch = collate_packed(examples())
    alone = model(torch.tensor([examples()[1].input_ids]), use_cache=False).logits[0]
    second = slice(7, 12)

    def error(**kwargs) -> float:
        logits = model(batch["input_ids"], position_ids=batch["position_ids"], **kwargs).logits[0, second]
        return (logits - alone).abs().max().item()

    assert error() > 1e-2  # default use_cache=True: a KV cache disables packed-sequence detection
    assert error(use_cache=False, attention_mask=torch.ones_like(batch["input_ids"])) > 1e-2
    assert error(use_cache=False) < 1e-5  # only this exact call isolates


@pytest.mark.parametrize("kind", ["phi3", "llama"])
def test_varlen_packed_logits_and_loss_equal_each_example_alone(kind):
    model = tiny_model(kind).eval()
    use_varlen_attention(model)
    assert model.config._attn_implementation == VARLEN_ATTENTION
    packed_examples = examples()
    batch = collate_packed(packed_examples)
    with torch.no_grad():
        packed = model(
            batch["input_ids"], position_ids=batch["position_ids"], cu_seq_lens_q=batch["cu_seq_lens_q"],
            cu_seq_lens_k=batch["cu_seq_lens_k"], max_length_q=batch["max_length_q"],
            max_length_k=batch["max_length_k"],
        ).logits[0]
        derived = model(batch["input_ids"], position_ids=batch["position_ids"]).logits[0]  # boundaries from positions
    start = 0
    for example in packed_examples:
        end = start + len(example.input_ids)
        with torch.no_grad():
            alone = model(torch.tensor([example.input_ids])).logits[0]
        torch.testing.assert_close(packed[start:end], alone, atol=1e-5, rtol=0)
        torch.testing.assert_close(derived[start:end], alone, atol=1e-5, rtol=0)
        labels = torch.tensor(example.labels)
        torch.testing.assert_close(
            example_loss(packed[start:end], batch["labels"][0, start:end]), example_loss(alone, labels), atol=1e-5, rtol=0
        )
        start = end


def test_varlen_gradients_match_unpacked_sum():
    """Training sees the same gradient packed as from the examples one by one (sum of token losses)."""
    packed_examples = examples((6, 9))
    model = tiny_model("phi3").train()
    use_varlen_attention(model)
    batch = collate_packed(packed_examples)
    logits = model(batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
    F.cross_entropy(logits[:-1], batch["labels"][0, 1:], ignore_index=IGNORE_INDEX, reduction="sum").backward()
    packed_grad = model.model.layers[0].self_attn.qkv_proj.weight.grad.clone()
    model.zero_grad()
    for example in packed_examples:
        logits = model(torch.tensor([example.input_ids])).logits[0]
        F.cross_entropy(logits[:-1], torch.tensor(example.labels)[1:], ignore_index=IGNORE_INDEX, reduction="sum").backward()
    torch.testing.assert_close(packed_grad, model.model.layers[0].self_attn.qkv_proj.weight.grad, atol=1e-5, rtol=1e-4)


def test_padded_rows_without_boundaries_are_one_example_each():
    query, key, value = torch.randn(2, 4, 6, 8), torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 8)
    output, _ = varlen_attention_forward(torch.nn.Module(), query, key, value, None)
    expected = F.scaled_dot_product_attention(query, key, value, is_causal=True, enable_gqa=True).transpose(1, 2)
    torch.testing.assert_close(output, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flash varlen kernels need a CUDA GPU")
def test_cuda_flash_varlen_matches_per_example_reference():
    torch.manual_seed(0)
    lengths = [37, 5, 300, 128]
    cu = torch.tensor([0, 37, 42, 342, 470], dtype=torch.int32, device="cuda")
    query = torch.randn(1, 24, 470, 128, device="cuda", dtype=torch.bfloat16)
    key, value = (torch.randn(1, 8, 470, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    flash, _ = varlen_attention_forward(torch.nn.Module(), query, key, value, None, cu_seq_lens_q=cu, max_length_q=max(lengths))
    reference, _ = varlen_attention_forward(torch.nn.Module(), query.float(), key.float(), value.float(), None,
                                            cu_seq_lens_q=cu, max_length_q=max(lengths))
    error = (flash.float() - reference).norm() / reference.norm()
    assert error < 1e-2


def _shared_rows(device="cpu", dtype=torch.float32, heads=(4, 2), dim=8, seed=0):
    """Two rows sharing a 5-token prefix, laid out [P C][R] by collate_shared_prefix, and q/k/v per flat position."""
    from lorakit.data.shared_prefix import collate_shared_prefix

    rows = [TokenizedExample(list(range(1, 10)), list(range(1, 10))), TokenizedExample([1, 2, 3, 4, 5, 20, 21], [0] * 7)]
    batch = collate_shared_prefix(rows, [None, 0])
    generator = torch.Generator().manual_seed(seed)
    flat = batch["input_ids"].shape[1]  # 9 + 2
    query = torch.randn(1, heads[0], flat, dim, generator=generator).to(device, dtype)
    key, value = (torch.randn(1, heads[1], flat, dim, generator=generator).to(device, dtype) for _ in range(2))
    return batch, query, key, value


def test_a_segment_with_a_parent_attends_to_the_prefix_then_causally_to_itself():
    """[R]'s outputs equal plain causal attention over the rejected row rebuilt whole (P's keys, then R's)."""
    batch, query, key, value = _shared_rows()
    output, _ = varlen_attention_forward(
        torch.nn.Module(), query, key, value, None, **{k: batch[k] for k in
                                                       ("cu_seq_lens_q", "max_length_q", "kv_index", "cu_seq_lens_k", "max_length_k")})
    assert batch["cu_seq_lens_q"].tolist() == [0, 9, 11] and batch["cu_seq_lens_k"].tolist() == [0, 9, 16]
    rejected = torch.tensor([0, 1, 2, 3, 4, 9, 10])  # P's flat positions, then R's own
    whole = F.scaled_dot_product_attention(query[:, :, rejected], key[:, :, rejected], value[:, :, rejected],
                                           is_causal=True, enable_gqa=True).transpose(1, 2)
    torch.testing.assert_close(output[:, 9:], whole[:, 5:], atol=1e-6, rtol=1e-5)
    chosen = F.scaled_dot_product_attention(query[:, :, :9], key[:, :, :9], value[:, :, :9], is_causal=True,
                                            enable_gqa=True).transpose(1, 2)
    torch.testing.assert_close(output[:, :9], chosen, atol=1e-6, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flash varlen kernels need a CUDA GPU")
def test_cuda_flash_aligns_a_shared_prefix_segment_bottom_right():
    batch, query, key, value = _shared_rows("cuda", torch.bfloat16, heads=(24, 8), dim=128)
    kwargs = {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()
              if k in ("cu_seq_lens_q", "max_length_q", "kv_index", "cu_seq_lens_k", "max_length_k")}
    flash, _ = varlen_attention_forward(torch.nn.Module(), query, key, value, None, **kwargs)
    reference, _ = varlen_attention_forward(torch.nn.Module(), query.float(), key.float(), value.float(), None, **kwargs)
    error = (flash.float() - reference).norm() / reference.norm()
    assert error < 1e-2
