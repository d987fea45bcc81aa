"""The tiled MLP (model/tiled_mlp.py) computes what the whole MLP computes. Tolerance, fp32 on CPU: the output and
the loss are compared bit for bit (each output row depends only on its input row); the gradients of the input
and of the LoRA weights are sums over tokens that the tiles add chunk by chunk, so they may differ in the order
of that sum only: rtol 1e-5, atol 1e-6 (measured: up to 7e-7, at gradients of ~0.1 to 1; a wrong chunk or dropout
mask moves them by ~0.1)."""

from __future__ import annotations

import pytest
import torch

from lorakit.model import tiled_mlp
from lorakit.model.checkpointing import activation_offload, apply_checkpointing, decoder_layers
from lorakit.model.fused_lora import use_fused_lora
from lorakit.model.tiled_mlp import TiledMLP, use_tiled_mlp

GRADIENT_TOLERANCE = dict(rtol=1e-5, atol=1e-6)


def _lora_model(architecture: str, dropout: float):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig, Phi3Config

    torch.manual_seed(0)
    shape = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, pad_token_id=None)
    config = LlamaConfig(**shape) if architecture == "llama" else Phi3Config(**shape)
    model = get_peft_model(AutoModelForCausalLM.from_config(config),
                           LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False, lora_dropout=dropout))
    use_fused_lora(model)
    return model.train()


def _loss_and_grads(model, ids, offload: bool = False):
    model.zero_grad()
    with activation_offload(offload):
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


def _count_chunks(monkeypatch) -> list[int]:
    """How many rows each MLP call of the tiles saw."""
    seen, real = [], tiled_mlp._chunks

    def chunks(rows, chunk_tokens):
        parts = real(rows, chunk_tokens)
        seen.extend(part.stop - part.start for part in parts)
        return parts

    monkeypatch.setattr(tiled_mlp, "_chunks", chunks)
    return seen


@pytest.mark.parametrize("architecture", ["llama", "phi3"])
def test_tiled_mlp_loss_and_lora_gradients_equal_the_whole_mlp(architecture, monkeypatch):
    model = _lora_model(architecture, dropout=0.0)
    ids = torch.randint(0, 128, (2, 25))  # 50 rows: chunks of 7, the last one 1 row
    whole_loss, whole_grads = _loss_and_grads(model, ids)
    chunks = _count_chunks(monkeypatch)
    assert use_tiled_mlp(model, True, chunk_tokens=7) == 2
    tiled_loss, tiled_grads = _loss_and_grads(model, ids)
    # 2 layers x (forward + backward) x chunks of 7, 7, ..., 1
    assert chunks == ([7] * 7 + [1]) * 4
    assert torch.equal(tiled_loss, whole_loss)
    assert tiled_grads.keys() == whole_grads.keys() and any("mlp" in name for name in tiled_grads)
    for name in whole_grads:
        torch.testing.assert_close(tiled_grads[name], whole_grads[name], **GRADIENT_TOLERANCE, msg=name)
    assert use_tiled_mlp(model, False) == 2  # and back: the model's own MLP, to the bit
    again_loss, again_grads = _loss_and_grads(model, ids)
    assert torch.equal(again_loss, whole_loss)
    assert all(torch.equal(again_grads[name], whole_grads[name]) for name in whole_grads)


def test_tiled_mlp_inside_offloaded_reentrant_checkpoints_equals_the_plain_model():
    """The planner's combination: every layer checkpointed (reentrant), layer inputs offloaded, MLPs tiled."""
    model = _lora_model("llama", dropout=0.0)
    ids = torch.randint(0, 128, (1, 40))
    plain_loss, plain_grads = _loss_and_grads(model, ids)
    apply_checkpointing(model, 2, reentrant=True)
    use_tiled_mlp(model, True, chunk_tokens=16)
    loss, grads = _loss_and_grads(model, ids, offload=True)
    assert torch.equal(loss, plain_loss)
    for name in plain_grads:
        torch.testing.assert_close(grads[name], plain_grads[name], **GRADIENT_TOLERANCE, msg=name)


def test_dropout_masks_are_replayed_in_backward_and_the_random_stream_continues_after_the_forward():
    """With LoRA dropout the tiles draw one mask per chunk; backward must draw the same ones again (else the
    gradients belong to other masks), and leave the global stream where the forward left it (else resume and
    every later mask would change). Reference: the same chunks through plain autograd."""
    model = _lora_model("llama", dropout=0.3)
    mlp = decoder_layers(model)[0].mlp
    x = torch.randn(1, 30, 32, requires_grad=True)
    grad_out = torch.randn(1, 30, 32)
    params = [p for p in mlp.parameters() if p.requires_grad]

    torch.manual_seed(5)
    reference = torch.cat([mlp(x[:, start:start + 8]) for start in range(0, 30, 8)], dim=1)
    after_forward = torch.get_rng_state()
    reference.backward(grad_out)
    expected = [x.grad.clone()] + [p.grad.clone() for p in params]
    x.grad = None
    for p in params:
        p.grad = None

    torch.manual_seed(5)
    out = TiledMLP.apply(x, mlp.forward, 8, *params)
    assert torch.equal(torch.get_rng_state(), after_forward)
    torch.rand(3)  # the later layers' masks
    before_backward = torch.get_rng_state()
    out.backward(grad_out)
    assert torch.equal(torch.get_rng_state(), before_backward)  # backward's replay left the stream alone
    assert torch.equal(out, reference)
    for got, want in zip([x.grad] + [p.grad for p in params], expected, strict=True):
        torch.testing.assert_close(got, want, **GRADIENT_TOLERANCE)


def test_mlp_chunk_is_a_fixed_budget_of_gate_up_output():
    assert tiled_mlp.mlp_chunk_tokens(8192, 2) * 2 * 8192 * 2 == tiled_mlp.MLP_CHUNK_BYTES
    assert tiled_mlp.mlp_chunk_tokens(64, 4) == 131072 and tiled_mlp.mlp_chunk_tokens(10**9, 2) == 256
