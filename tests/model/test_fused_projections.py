"""Phi3's qkv split and fused gate-up SwiGLU compute exactly what transformers' and liger's modules compute,
and the qkv backward is one concatenation instead of three zero-filled slices."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch

from conftest import lora_model_with_nonzero_b
from lorakit.data.packing import collate_packed
from lorakit.data.render import TokenizedExample
from lorakit.errors import ConfigError
from lorakit.model.attention import use_varlen_attention
from lorakit.model.fused_lora import use_fused_lora
from lorakit.model.fused_projections import (
    fused_gate_up_mlp_forward,
    split_qkv_attention_forward,
    use_fused_projections,
)
from lorakit.model.kernels import apply_fused_kernels, causal_lm_loss, liger_available
from lorakit.runtime.ablation import enabled


def _packed_batch(device="cpu"):
    generator = torch.Generator().manual_seed(0)
    examples = [TokenizedExample(torch.randint(3, 49152, (n,), generator=generator).tolist(),
                                 [-100] * (n // 2) + torch.randint(3, 49152, (n - n // 2,), generator=generator).tolist())
                for n in (40, 17, 33)]
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in collate_packed(examples).items()}


def _loss_and_grads(model, batch):
    model.train()
    torch.manual_seed(7)  # the same LoRA dropout masks in every model
    loss = causal_lm_loss(model, batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_split_qkv_gives_identical_loss_and_gradients(tiny_phi3_dir):
    """Packed rows through lorakit's varlen attention and the fused LoRA, as training runs them: bit-identical
    (the split's views are the slices' views, and adding zero-filled slices is exact)."""
    reference = lora_model_with_nonzero_b(tiny_phi3_dir)
    use_fused_lora(reference)
    use_varlen_attention(reference)
    split = copy.deepcopy(reference)
    assert use_fused_projections(split, torch.device("cpu")) == ["split_qkv"]  # the SwiGLU kernel is CUDA only
    batch = _packed_batch()
    loss, grads = _loss_and_grads(reference, batch)
    split_loss, split_grads = _loss_and_grads(split, batch)
    assert torch.equal(split_loss, loss)
    assert split_grads.keys() == grads.keys() and all(torch.equal(split_grads[n], grads[n]) for n in grads)
    assert any("qkv_proj.lora_A" in n and grads[n].abs().sum() > 0 for n in grads)


def _grad_nodes(tensor) -> Counter:
    """How many autograd nodes of each kind the backward pass of `tensor` runs."""
    seen, names, stack = set(), Counter(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names[type(node).__name__] += 1
        stack.extend(next_node for next_node, _ in node.next_functions)
    return names


def test_qkv_backward_is_one_split_not_three_slices(tiny_phi3_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_phi3_dir, dtype=torch.float32)
    attention = model.model.layers[0].self_attn
    hidden = torch.randn(1, 6, model.config.hidden_size, requires_grad=True)
    positions = torch.arange(6)[None]
    rotary = model.model.rotary_emb(hidden, positions)
    stock, _ = attention(hidden, rotary, None)
    use_fused_projections(model, torch.device("cpu"))
    assert attention.forward.__func__ is split_qkv_attention_forward
    split, _ = attention(hidden, rotary, None)
    assert torch.equal(split, stock)
    stock_nodes, split_nodes = _grad_nodes(stock), _grad_nodes(split)
    # The three q/k/v slices (each a zero-filled full-width gradient) become one split (one concatenation);
    # the rotary embedding's own slices remain in both.
    assert stock_nodes["SliceBackward0"] - split_nodes["SliceBackward0"] == 3
    assert (stock_nodes["SplitWithSizesBackward0"], split_nodes["SplitWithSizesBackward0"]) == (0, 1)


def test_disabled_optimisations_keep_transformers_forward(tiny_phi3_dir, monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("LORAKIT_DISABLE", "split_qkv, fused_lora")
    model = AutoModelForCausalLM.from_pretrained(tiny_phi3_dir, dtype=torch.float32)
    assert use_fused_projections(model, torch.device("cpu")) == []
    assert "forward" not in vars(model.model.layers[0].self_attn)
    assert use_fused_lora(lora_model_with_nonzero_b(tiny_phi3_dir)) == 0
    assert enabled("host_overlap") and not enabled("split_qkv")


def test_unknown_optimisation_name_is_refused(monkeypatch):
    monkeypatch.setenv("LORAKIT_DISABLE", "split_qkv,fused_swiglu")
    with pytest.raises(ConfigError) as caught:
        enabled("split_qkv")
    assert caught.value.problems == [
        "unknown optimisation 'fused_swiglu'; known: fused_lora, fused_layer, split_qkv, fused_gate_up, reentrant_checkpoint, "
        "host_overlap, dequantized_weights, decode_without_cudnn, adapter_in_base_dtype, inference_lora, joint_rotary"]
    assert str(caught.value).startswith("LORAKIT_DISABLE (environment variable): 1 config problem:")


@pytest.mark.skipif(not (torch.cuda.is_available() and liger_available()), reason="liger kernels need CUDA + liger-kernel")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_gate_up_equals_liger_chunked_swiglu(tiny_phi3_dir, dtype):
    """On the GPU: the SwiGLU reading gate_up in place gives liger's chunked SwiGLU's loss and LoRA gradients
    (the same Triton arithmetic), with the other lorakit optimisations on in both."""
    reference = lora_model_with_nonzero_b(tiny_phi3_dir, "cuda", dtype)
    apply_fused_kernels(reference.get_base_model(), torch.device("cuda"))
    use_fused_lora(reference)
    use_varlen_attention(reference)
    fused = copy.deepcopy(reference)
    assert use_fused_projections(fused, torch.device("cuda")) == ["fused_gate_up", "split_qkv"]
    assert fused.get_base_model().model.layers[0].mlp.forward.__func__ is fused_gate_up_mlp_forward
    batch = _packed_batch("cuda")
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        loss, grads = _loss_and_grads(reference, batch)
        fused_loss, fused_grads = _loss_and_grads(fused, batch)
    # Same kernels' arithmetic; flash attention's backward accumulates in another order from run to run on the GPU.
    torch.testing.assert_close(fused_loss, loss, rtol=1e-6, atol=1e-6)
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2
    for name, grad in grads.items():
        assert (fused_grads[name].float() - grad.float()).norm() <= tolerance * grad.float().norm() + 1e-6, name


class _RowsSwiGLU(torch.autograd.Function):
    """liger's fused gate-up contract in plain PyTorch (rows [N, 2I] -> [N, I]; backward gives rows), for CPU."""

    @staticmethod
    def forward(ctx, rows, in_place=False):
        assert rows.dim() == 2, "liger's kernel returns row gradients: callers must hand it rows"
        ctx.save_for_backward(rows)
        gate, up = rows.chunk(2, dim=-1)
        return torch.nn.functional.silu(gate) * up

    @staticmethod
    def backward(ctx, grad):
        (rows,) = ctx.saved_tensors
        with torch.enable_grad():
            leaf = rows.detach().requires_grad_()
            gate, up = leaf.chunk(2, dim=-1)
            (torch.nn.functional.silu(gate) * up).backward(grad)
        return leaf.grad, None


def test_gate_up_switch_finds_mlps_of_a_model_loaded_before_liger_renamed_the_class(tiny_phi3_dir, monkeypatch):
    """liger replaces modeling_phi3.Phi3MLP when it patches a model: the MLPs of the model already loaded are still
    switched, given rows, and give the stock MLP's output and input gradient (liger's kernel stood in for by
    its contract in plain PyTorch, as CPUs cannot run Triton)."""
    from transformers import AutoModelForCausalLM
    from transformers.models.phi3 import modeling_phi3

    from lorakit.model import fused_projections

    model = AutoModelForCausalLM.from_pretrained(tiny_phi3_dir, dtype=torch.float64)
    stock = copy.deepcopy(model.model.layers[0].mlp)
    monkeypatch.setattr(modeling_phi3, "Phi3MLP", type("LigerPhi3SwiGLUMLP", (torch.nn.Module,), {}))
    monkeypatch.setattr(fused_projections, "liger_available", lambda: True)
    monkeypatch.setattr(fused_projections, "_fused_gate_up_swiglu", lambda: _RowsSwiGLU)
    assert use_fused_projections(model, torch.device("cuda")) == ["fused_gate_up", "split_qkv"]
    switched = model.model.layers[0].mlp
    hidden = torch.randn(2, 5, model.config.hidden_size, dtype=torch.float64, requires_grad=True)
    expected = stock(hidden)
    (expected_grad,) = torch.autograd.grad(expected.square().sum(), hidden)
    output = switched(hidden)
    (grad,) = torch.autograd.grad(output.square().sum(), hidden)
    torch.testing.assert_close(output, expected)
    torch.testing.assert_close(grad, expected_grad)


def test_split_qkv_runs_only_where_transformers_attention_reads_as_the_copied_text(tiny_phi3_dir, monkeypatch,
                                                                                    caplog):
    """pyproject.toml sets no upper bound on transformers: where its Phi3Attention.forward is not the 5.25.0 text
    the split copies, training keeps transformers' forward (one WARNING) and computes what it computes; the SwiGLU
    switch, which copies no transformers text, is unaffected. The installed transformers is the copied text."""
    from transformers import AutoModelForCausalLM
    from transformers.models.phi3 import modeling_phi3

    from lorakit.model import fused_projections

    def forward(model):
        torch.manual_seed(3)
        hidden = torch.randn(2, 6, model.config.hidden_size, dtype=torch.float64)
        attention = model.model.layers[0].self_attn
        return attention(hidden, model.model.rotary_emb(hidden, torch.arange(6)[None]), None)[0]

    stock = AutoModelForCausalLM.from_pretrained(tiny_phi3_dir, dtype=torch.float64)
    assert fused_projections.COPIED_SOURCE.changed() == ()
    model = copy.deepcopy(stock)
    assert use_fused_projections(model, torch.device("cpu")) == ["split_qkv"]
    assert model.model.layers[0].self_attn.forward.__func__ is split_qkv_attention_forward
    monkeypatch.setitem(fused_projections.COPIED_SOURCE.sha256, "Phi3Attention.forward", "0" * 16)
    monkeypatch.setattr(modeling_phi3, "Phi3MLP", type("LigerPhi3SwiGLUMLP", (torch.nn.Module,), {}))
    monkeypatch.setattr(fused_projections, "liger_available", lambda: True)
    monkeypatch.setattr(fused_projections, "_fused_gate_up_swiglu", lambda: _RowsSwiGLU)
    kept = copy.deepcopy(stock)
    with caplog.at_level("WARNING", logger="lorakit.model.fused_projections"):
        assert use_fused_projections(kept, torch.device("cuda")) == ["fused_gate_up"]
    assert not any("forward" in vars(module) for module in kept.modules() if isinstance(module, modeling_phi3.Phi3Attention))
    assert [r.getMessage() for r in caplog.records] == [
        f"split qkv off: transformers {__import__('transformers').__version__}'s Phi3Attention.forward differ from "
        "the 5.25.0 text model/fused_projections.py copies; the model keeps transformers' own attention forward"]
    assert torch.equal(forward(kept), forward(stock)) and torch.equal(forward(model), forward(stock))
