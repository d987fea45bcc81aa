"""The fused loss equals the model's own loss; liger kernels (GPU) equal the plain PyTorch modules."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig, Phi3Config

from lorakit.data.collate import collate_padded
from lorakit.data.masking import IGNORE_INDEX
from lorakit.data.packing import collate_packed
from lorakit.data.render import TokenizedExample
from lorakit.model import kernels
from lorakit.model.attention import use_varlen_attention
from lorakit.model.kernels import apply_fused_kernels, causal_lm_loss, chunked_linear_cross_entropy, liger_available

VOCAB = 49152
TINY = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, tie_word_embeddings=True)


def tiny_lora_model(kind: str, device: str = "cpu", dtype=torch.float32):
    torch.manual_seed(0)
    config = Phi3Config(partial_rotary_factor=0.75, **TINY) if kind == "phi3" else LlamaConfig(**TINY)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype).to(device)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", init_lora_weights=False)
    return get_peft_model(model, lora)


def examples(lengths=(9, 4, 13)):
    generator = torch.Generator().manual_seed(3)
    made = []
    for length in lengths:
        ids = torch.randint(0, VOCAB, (length,), generator=generator).tolist()
        made.append(TokenizedExample(ids, [IGNORE_INDEX] * 3 + ids[3:]))
    return made


def lora_grads(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("chunk_elements", [VOCAB * 2, VOCAB * 1000])  # several chunks, then one
def test_chunked_linear_cross_entropy_equals_full_logits(monkeypatch, chunk_elements):
    monkeypatch.setattr(kernels, "_CHUNK_LOGIT_ELEMENTS", chunk_elements)
    torch.manual_seed(0)
    hidden = torch.randn(7, 32, requires_grad=True)
    weight = (0.05 * torch.randn(VOCAB, 32)).requires_grad_()
    targets = torch.randint(0, VOCAB, (7,))
    fused = chunked_linear_cross_entropy(hidden, weight, targets)
    fused.backward()
    fused_grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad, weight.grad = None, None
    plain = F.cross_entropy(hidden @ weight.t(), targets, reduction="sum")
    plain.backward()
    torch.testing.assert_close(fused, plain, atol=1e-4, rtol=1e-6)
    torch.testing.assert_close(fused_grads[0], hidden.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused_grads[1], weight.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["phi3", "llama"])
def test_causal_lm_loss_equals_model_loss_padded(kind):
    model = tiny_lora_model(kind)
    batch = collate_padded(examples(), pad_token_id=2)
    items = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    reference = model(**batch, num_items_in_batch=items).loss
    reference.backward()
    reference_grads = lora_grads(model)
    model.zero_grad()
    fused = causal_lm_loss(model, batch, num_items_in_batch=items)
    fused.backward()
    torch.testing.assert_close(fused, reference, atol=1e-5, rtol=0)
    for name, grad in lora_grads(model).items():
        torch.testing.assert_close(grad, reference_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_causal_lm_loss_packed_equals_examples_alone():
    """Padding-free packing + fused loss give the per-token mean loss of the examples run one by one."""
    model = tiny_lora_model("phi3")
    use_varlen_attention(model)
    batch = collate_packed(examples())
    packed = causal_lm_loss(model, batch)
    total, count = 0.0, 0
    for example in examples():
        single = collate_padded([example], pad_token_id=2)
        tokens = int((single["labels"][:, 1:] != IGNORE_INDEX).sum())
        total += float(model(**single, use_cache=False).loss) * tokens
        count += tokens
    assert abs(float(packed) - total / count) < 1e-5


def test_cpu_uses_plain_pytorch_modules():
    model = tiny_lora_model("phi3")
    before = copy.deepcopy(model.state_dict())
    assert apply_fused_kernels(model, torch.device("cpu")) == []
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.skipif(not (torch.cuda.is_available() and liger_available()), reason="liger kernels need CUDA + liger-kernel")
@pytest.mark.parametrize("kind", ["phi3", "llama"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_liger_kernels_give_the_same_loss_and_gradients(kind, dtype):
    plain = tiny_lora_model(kind, "cuda", dtype)
    fused = copy.deepcopy(plain)
    patched = apply_fused_kernels(fused.get_base_model(), torch.device("cuda"))
    assert patched == ["rms_norm", "rope", "swiglu"]
    for model in (plain, fused):
        use_varlen_attention(model)
    batch = {k: (v.cuda() if torch.is_tensor(v) else v) for k, v in collate_packed(examples((40, 17, 90))).items()}
    plain_loss = plain(**batch, use_cache=False).loss  # model's own modules and full-logit loss
    plain_loss.backward()
    fused_loss = causal_lm_loss(fused, batch)
    fused_loss.backward()
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2
    assert abs(float(fused_loss) - float(plain_loss)) < tolerance * max(1.0, abs(float(plain_loss)))
    plain_grads, fused_grads = lora_grads(plain), lora_grads(fused)
    for name, grad in fused_grads.items():
        reference = plain_grads[name].float()
        assert (grad.float() - reference).norm() <= (0.05 if dtype == torch.bfloat16 else 1e-3) * reference.norm() + 1e-6, name


def test_liger_backend_noise_is_silenced_and_real_warnings_are_not():
    """Issue 9, point 7: liger-kernel logs a WARNING per optional backend it cannot import and warns per kernel
    that falls back to Triton; a user can act on neither (the messages are liger's own, sent the way it does)."""
    import logging
    import warnings

    kernels.quiet_liger()
    assert not logging.getLogger("liger_kernel.backends.registry").isEnabledFor(logging.WARNING)
    assert logging.getLogger("liger_kernel.backends.registry").isEnabledFor(logging.ERROR)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        kernels.quiet_liger.__wrapped__()  # the filters as installed, inside this recording context
        warnings.warn("Liger rms_norm: requested 'cutedsl' implementation not usable (no CuTe DSL); falling back "
                      "to 'triton'. Set LIGER_KERNEL_STRICT=1 to raise instead.", UserWarning, stacklevel=1)
        warnings.warn("liger-cute-kernels is not installed; native FLSCE/MoE configuration was skipped.", UserWarning, stacklevel=1)
        warnings.warn("something a user must see", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something a user must see"]
