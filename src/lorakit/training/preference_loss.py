"""Preference losses: DPO, ORPO and SimPO over a batch of chosen answers followed by their rejected twins.

A preference batch (data/preference_batch.py) holds 2B rows: rows [0, B) are prompt + chosen answer, rows
[B, 2B) the same prompts + rejected answer, labelled exactly as SFT labels them (each answer and its
end-of-turn token; -100 elsewhere). Everything here is a function of per-sequence log-probabilities over
those labelled tokens, so the loss sees what SFT would train on and nothing else. The same rows may come as
one flat shared-prefix row (data/shared_prefix.py: each pair's common prompt computed once, no pads); `row_logps`
gives the same per-row sums and token counts from either layout, and every loss is a function of those.

The formulas are TRL 1.16.0's (`DPOTrainer._compute_loss` with loss_type="sigmoid",
`ORPOTrainer.odds_ratio_loss`, `CPOTrainer.cpo_loss` with loss_type="simpo"), and tests/training/
test_preference_loss_trl.py checks loss, rewards and LoRA gradients against TRL itself on a fixed batch.

DPO's reference model is the policy as preference tuning found it, without a second copy of the weights: a
fresh adapter's reference is the same weights with the adapter switched off (peft's `disable_adapter`); an
adapter that was already trained (DPO after SFT) is first copied into a frozen adapter named
`REFERENCE_ADAPTER` (megabytes, not the model), which is what TRL's DPOTrainer does with a trained adapter.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from lorakit.data.masking import IGNORE_INDEX
from lorakit.model.kernels import flat_row_outputs, lm_head_is_fusable, loss_positions, unwrap_peft_model

__all__ = ["PreferenceMethod", "PREFERENCE_METHODS", "PreferenceLoss", "sequence_logps", "answer_token_logps",
           "shared_prefix_row_logps", "row_logps", "answer_means",
           "dpo_loss", "orpo_loss", "simpo_loss", "REFERENCE_ADAPTER", "add_reference_adapter", "reference_logps",
           "preference_loss", "batch_rows"]

PreferenceMethod = Literal["dpo", "orpo", "simpo"]
PREFERENCE_METHODS: tuple[str, ...] = ("dpo", "orpo", "simpo")


@dataclass(frozen=True)
class PreferenceLoss:
    """The loss to backpropagate and, per pair, the implicit rewards (detached) that say how training goes:
    a rising margin (chosen - rejected) and accuracy (share of pairs with chosen > rejected)."""

    loss: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor

    @property
    def margins(self) -> torch.Tensor:
        return self.chosen_rewards - self.rejected_rewards

    @property
    def accuracies(self) -> torch.Tensor:
        return (self.chosen_rewards > self.rejected_rewards).float()

    def metrics(self) -> dict[str, float]:
        """Batch means, under TRL's metric names without the slash (rewards_chosen, ..., rewards_accuracy)."""
        return {"rewards_chosen": float(self.chosen_rewards.mean()),
                "rewards_rejected": float(self.rejected_rewards.mean()),
                "rewards_margin": float(self.margins.mean()),
                "rewards_accuracy": float(self.accuracies.mean())}


def answer_means(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Per-row mean answer log-prob (SimPO, ORPO), over at least one token: a row whose answer max_length cut away
    (0 tokens) gets 0 / 1 = 0, never 0 / 0 = NaN, which one such row would spread to the whole micro-batch's loss
    and then to every LoRA weight. `lorakit data check` and training refuse such pairs (data/preference_check.py:
    no-answer-left); the floor only keeps a batch that gets one anyway finite.

    >>> answer_means(torch.tensor([-6.0, 0.0]), torch.tensor([3, 0])).tolist()
    [-2.0, 0.0]
    """
    return sums / counts.clamp(min=1)


def sequence_logps(token_logps: torch.Tensor, labels: torch.Tensor, average: bool = False) -> torch.Tensor:
    """Sum (or mean, `answer_means`) over each row of the log-probs of its labelled tokens.

    `token_logps[b, t]` is log p(labels[b, t + 1] | tokens <= t), shape [B, T - 1]; unlabelled positions are
    ignored whatever they hold.

    >>> sequence_logps(torch.tensor([[-1.0, -2.0], [-3.0, -4.0]]), torch.tensor([[7, -100, 5], [7, 6, 5]]))
    tensor([-2., -7.])
    >>> sequence_logps(torch.tensor([[-1.0, -2.0], [-3.0, -4.0]]), torch.tensor([[7, -100, 5], [7, 6, 5]]), True)
    tensor([-2.0000, -3.5000])
    """
    mask = labels[:, 1:] != IGNORE_INDEX
    total = (token_logps * mask).sum(-1)
    return answer_means(total, mask.sum(-1)) if average else total


# Transient fp32 logits per chunk: ~256 MiB at Phi-4-mini's 200,064-wide vocabulary.
_CHUNK_LOGIT_ELEMENTS = 64 * 1024 * 1024


class _ChunkedTokenLogps(torch.autograd.Function):
    """log p(target_i | h_i) = logit_i[target_i] - logsumexp(logit_i), logits = h_i @ weight.T, one chunk of rows
    at a time; the backward pass recomputes each chunk's logits instead of keeping [tokens, vocab] of them.
    The head is frozen under LoRA, so only the hidden states get a gradient."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_rows: int):
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_rows):
            logits = (hidden[start:start + chunk_rows] @ weight.T).float()
            picked = logits.gather(1, targets[start:start + chunk_rows, None]).squeeze(1)
            out[start:start + chunk_rows] = picked - logits.logsumexp(-1)
        ctx.save_for_backward(hidden, weight, targets)
        ctx.chunk_rows = chunk_rows
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, targets = ctx.saved_tensors
        assert not ctx.needs_input_grad[1], "the LM head is frozen under LoRA"
        grad_hidden = torch.empty_like(hidden)
        for start in range(0, hidden.shape[0], ctx.chunk_rows):
            rows = slice(start, start + ctx.chunk_rows)
            logits = (hidden[rows] @ weight.T).float()
            # d logp / d logits = onehot(target) - softmax(logits), scaled by each row's incoming gradient
            grad_logits = logits.softmax(-1).mul_(-grad_out[rows, None])
            grad_logits.scatter_add_(1, targets[rows, None], grad_out[rows, None])
            grad_hidden[rows] = (grad_logits.to(weight.dtype) @ weight).to(hidden.dtype)
        return grad_hidden, None, None, None


def _picked_logps(base, hidden: torch.Tensor, positions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(targets[i] | hidden[positions[i]]) through the chunked head; `hidden` [N, d] flat."""
    weight = base.get_output_embeddings().weight
    if torch.is_autocast_enabled(hidden.device.type):  # the head's matmul in the autocast dtype, as the model's own
        dtype = torch.get_autocast_dtype(hidden.device.type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
    selected = hidden.index_select(0, positions)
    chunk_rows = max(1, _CHUNK_LOGIT_ELEMENTS // weight.shape[0])
    return _ChunkedTokenLogps.apply(selected, weight, targets, chunk_rows)


def answer_token_logps(model, batch: dict) -> torch.Tensor:
    """log p(label) at every position that predicts a label, [B, T - 1], zero elsewhere (a padded batch).

    Like `causal_lm_loss`, the LM head runs only on positions that predict an answer token, in chunks, so neither
    the prompts' nor the answers' [tokens, vocab] logits are ever held whole; a head that rescales its logits (or
    is quantized) goes through the model's own forward instead.
    """
    labels = batch["labels"]
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    base = unwrap_peft_model(model)
    targets = labels[:, 1:]
    if not lm_head_is_fusable(base):
        logits = model(**inputs, use_cache=False).logits[:, :-1].float()
        picked = torch.gather(logits.log_softmax(-1), -1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return picked.masked_fill(targets == IGNORE_INDEX, 0.0)
    hidden = base.get_decoder()(**inputs, use_cache=False).last_hidden_state
    keep = loss_positions(labels).to(hidden.device)  # flat positions t with a label at t + 1
    width = labels.shape[1]
    rows, columns = keep // width, keep % width
    picked = _picked_logps(base, hidden.reshape(-1, hidden.shape[-1]), keep, labels[rows, columns + 1].to(hidden.device))
    # + 0 * hidden: a batch with no answer token left (truncated away) still has a graph for backward()
    return hidden.new_zeros(targets.shape, dtype=picked.dtype).index_put((rows, columns), picked) + hidden.sum() * 0.0


def shared_prefix_row_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed answer log-probs, answer tokens) of every original row of a shared-prefix batch
    (data/shared_prefix.py): one forward of the flat row, the head only on the predicting positions."""
    outputs, are_logits = flat_row_outputs(model, batch)
    positions, targets = batch["predicting_positions"], batch["predicted_labels"]
    if are_logits:
        picked = outputs.index_select(0, positions).float().log_softmax(-1).gather(1, targets[:, None]).squeeze(1)
    else:
        picked = _picked_logps(unwrap_peft_model(model), outputs, positions, targets)
    anchor = outputs.sum() * 0.0  # a batch with no answer token left still has a graph for backward()
    sums = picked.new_zeros(batch["row_count"]).index_add(0, batch["label_rows"], picked)
    return sums + anchor, batch["label_counts"].to(sums.device)


def row_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed answer log-probs, answer tokens) per row of a preference batch, padded or shared-prefix: every loss
    below is a function of these two, so the two layouts give the same losses and gradients."""
    if "kv_index" in batch:
        return shared_prefix_row_logps(model, batch)
    mask = batch["labels"][:, 1:] != IGNORE_INDEX
    return sequence_logps(answer_token_logps(model, batch), batch["labels"]), mask.sum(-1)


def dpo_loss(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
             beta: float) -> PreferenceLoss:
    """DPO (sigmoid): -log sigmoid(beta * ((chosen - ref_chosen) - (rejected - ref_rejected))), batch mean;
    rewards beta * (policy - reference) log-prob, summed over answer tokens."""
    chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
    loss = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio)).mean()
    return PreferenceLoss(loss, beta * chosen_ratio.detach(), beta * rejected_ratio.detach())


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable on both sides of -ln 2. Each branch sees only its own side's x: torch.where
    sends the unselected branch a zero gradient, and log1p(-exp(x)) at x ~ -1e-9 (exp rounds to 1) is -inf with an
    infinite derivative, 0 x inf = NaN."""
    low = x < -0.6931471805599453
    return torch.where(low, torch.log1p(-torch.exp(x.clamp(max=-0.6931471805599453))),
                       torch.log(-torch.expm1(x.clamp(min=-0.6931471805599453))))


def orpo_loss(chosen_mean: torch.Tensor, rejected_mean: torch.Tensor, chosen_nll: torch.Tensor,
              beta: float) -> PreferenceLoss:
    """ORPO: chosen_nll - beta * mean(log sigmoid(log odds(chosen) - log odds(rejected))), where odds(p) =
    p / (1 - p) of the per-token mean log-prob; rewards beta * mean log-prob. No reference model.

    A mean of 0 (p = 1: an answer with no tokens left, `answer_means`, or one the model is certain of to float
    precision) has infinite odds; it is taken as the negative normal float nearest 0 instead (-1.2e-38: odds
    ~1e38), so the loss stays finite. Any mean below that is unchanged, so TRL's numbers stay equal."""
    chosen_mean, rejected_mean = chosen_mean.float(), rejected_mean.float()
    ceiling = -torch.finfo(torch.float32).tiny
    chosen, rejected = chosen_mean.clamp(max=ceiling), rejected_mean.clamp(max=ceiling)
    log_odds = (chosen - rejected) - (_log1mexp(chosen) - _log1mexp(rejected))
    loss = chosen_nll - (beta * F.logsigmoid(log_odds)).mean()
    return PreferenceLoss(loss, beta * chosen_mean.detach(), beta * rejected_mean.detach())


def simpo_loss(chosen_mean: torch.Tensor, rejected_mean: torch.Tensor, beta: float, gamma: float) -> PreferenceLoss:
    """SimPO: -log sigmoid(beta * (chosen_mean - rejected_mean) - gamma), batch mean, on per-token mean
    log-probs (a length-normalised DPO without reference; gamma is the target reward margin)."""
    loss = -F.logsigmoid(beta * (chosen_mean - rejected_mean - gamma / beta)).mean()
    return PreferenceLoss(loss, beta * chosen_mean.detach(), beta * rejected_mean.detach())


REFERENCE_ADAPTER = "reference"


def add_reference_adapter(model) -> None:
    """Freeze a copy of the trained adapter as DPO's reference (for a run that starts from a trained adapter)."""
    active = model.active_adapter
    model.add_adapter(REFERENCE_ADAPTER, model.peft_config[active])
    parameters = dict(model.named_parameters())
    for name, parameter in parameters.items():
        if f".{active}." in name:
            reference = parameters[name.replace(f".{active}.", f".{REFERENCE_ADAPTER}.")]
            reference.data.copy_(parameter.data)
            reference.requires_grad_(False)


@contextmanager
def _reference_model(model) -> Iterator[None]:
    """The model as DPO's reference: the frozen copy of the starting adapter if there is one, else no adapter."""
    if REFERENCE_ADAPTER not in model.peft_config:
        with model.disable_adapter():
            yield
        return
    active = model.active_adapter
    model.set_adapter(REFERENCE_ADAPTER)
    try:
        yield
    finally:
        model.set_adapter(active)  # peft makes the active adapter trainable again, and the reference frozen


def reference_logps(model, batch: dict) -> torch.Tensor:
    """Summed answer log-probs of every row under DPO's reference model (no gradient)."""
    with torch.no_grad(), _reference_model(model):
        return row_logps(model, batch)[0]


def _chosen_nll(token_logps: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood over every labelled token of the given rows (token-weighted, as SFT)."""
    mask = labels[:, 1:] != IGNORE_INDEX
    return -(token_logps * mask).sum() / mask.sum().clamp(min=1)


def batch_rows(batch: dict) -> int:
    """Rows of a preference batch (chosen rows, then as many rejected rows), in either layout."""
    return batch["row_count"] if "kv_index" in batch else batch["labels"].shape[0]


def preference_loss(model, batch: dict, method: PreferenceMethod, beta: float, simpo_gamma: float = 0.5,
                    reference: torch.Tensor | None = None, nll_labels: torch.Tensor | None = None) -> PreferenceLoss:
    """The loss of one preference batch (2B rows, chosen first) in one forward of both halves; the batch is
    padded (`collate_preferences`) or shared-prefix (`collate_preferences_shared`).

    `reference`: DPO's reference log-probs of the 2B rows (default: `reference_logps`: the frozen starting adapter,
    or the adapter switched off).
    `nll_labels` (padded batches): ORPO's NLL targets for the chosen rows (default: the batch's labels, i.e. the
    chosen answers as SFT supervises them; TRL scores the whole prompt too, which its equality test passes here).
    """
    half = batch_rows(batch) // 2
    assert batch_rows(batch) == 2 * half, "a preference batch holds chosen rows then as many rejected rows"
    if method == "dpo" and reference is None:
        reference = reference_logps(model, batch)
    if method == "orpo" and nll_labels is not None:
        labels = batch["labels"]
        if ((labels[:half, 1:] != IGNORE_INDEX) & (nll_labels[:, 1:] == IGNORE_INDEX)).any():
            raise ValueError("nll_labels must label at least every answer token of the chosen rows")
        token_logps = answer_token_logps(model, {**batch, "labels": torch.cat([nll_labels, labels[half:]])})
        nll = _chosen_nll(token_logps[:half], nll_labels)
        means = sequence_logps(token_logps, labels, average=True)  # the answer tokens only, as without nll_labels
        return orpo_loss(means[:half], means[half:], nll, beta)
    sums, counts = row_logps(model, batch)
    if method == "dpo":
        return dpo_loss(sums[:half], sums[half:], reference[:half], reference[half:], beta)
    means = answer_means(sums, counts)
    if method == "orpo":  # the chosen answers' token-mean NLL, as SFT weighs tokens
        return orpo_loss(means[:half], means[half:], -sums[:half].sum() / counts[:half].sum().clamp(min=1), beta)
    if method == "simpo":
        return simpo_loss(means[:half], means[half:], beta, simpo_gamma)
    raise ValueError(f"unknown preference method {method!r}; expected one of {', '.join(PREFERENCE_METHODS)}")
