"""FLOPs of a LoRA training step, counted three ways (issue 23: count what each tool does, name what is counted).

- model FLOPs (MFU): the work the step performs, where the tool does it. Frozen linear layers: forward + input
  gradient, 4 x parameters per computed position (a real token; lorakit's shared-prefix packing computes an
  example's prefix shared with the row's root once, so fewer positions than real tokens). Causal attention: 6 n^2 x
  (heads x head_dim) per layer per example of n tokens (forward 2, backward 4); a shared-prefix segment of q own
  tokens over k gathered keys (its prefix, then itself) attends q x (k - q) + q^2 / 2 pairs: q x (2k - q) in
  place of n^2. LM head: 4 x vocab x hidden per *labelled* position (one that predicts an
  answer token): both lorakit (liger's fused linear cross-entropy on the loss positions) and TRL 1.16 (its own
  chunked LM head on the positions whose label is not -100) run the head only there.
- executed FLOPs (HFU): model FLOPs + what the tool recomputes: the forward pass of every checkpointed layer again,
  and (TRL 1.16) the LM head's forward product again in its backward (`ChunkedLogProbFunction.backward`
  recomputes each logits tile; liger's kernel, which lorakit uses, computes the input gradient in the forward).
- the old count (issue 11's tables): the LM head on every real token, as if logits were computed everywhere.

None of them counts LoRA's own small products (r=16 on all linear layers: about 1% of the step) or elementwise
work; MFU = FLOPs / (seconds x the bf16 matmul rate measured on the same GPU in the same run).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StepCounts:
    """What a step's FLOPs depend on, summed over the measured steps of one row."""

    tokens: int  # real (non-padding) tokens
    labelled: int  # positions that predict an answer token (where the LM head runs)
    square_lengths: int  # sum over attention segments of queries x (2 keys - queries): n^2 for a whole example
    positions: int | None = None  # positions the layers compute; None: every real token (no shared prefix)

    @property
    def computed(self) -> int:
        """Positions the decoder layers compute.

        >>> StepCounts(10, 4, 100).computed, StepCounts(10, 4, 80, positions=7).computed
        (10, 7)
        """
        return self.tokens if self.positions is None else self.positions

    def __add__(self, other: StepCounts) -> StepCounts:
        return StepCounts(self.tokens + other.tokens, self.labelled + other.labelled,
                          self.square_lengths + other.square_lengths, self.computed + other.computed)


def segment_square(queries: int, keys: int) -> int:
    """Attention's n^2 equivalent of a segment of `queries` own tokens over `keys` keys (its shared prefix, then
    causally itself): twice its query-key pairs, q x (k - q) + q^2 / 2.

    >>> segment_square(5, 5), segment_square(2, 5)
    (25, 16)
    """
    return queries * (2 * keys - queries)


def linear_params(shape: dict) -> int:
    """Parameters of the decoder layers' linear projections (q, k, v, o, gate, up, down), all layers.

    >>> from lib.phi4_mini_run import PHI4_MINI
    >>> linear_params(PHI4_MINI)
    3221225472
    """
    d, i = shape["hidden_size"], shape["intermediate_size"]
    heads, kv = shape["num_attention_heads"], shape["num_key_value_heads"]
    head_dim = d // heads
    per_layer = d * (heads + 2 * kv) * head_dim + heads * head_dim * d + d * 2 * i + i * d
    return shape["num_hidden_layers"] * per_layer


def head_params(shape: dict) -> int:
    return shape["vocab_size"] * shape["hidden_size"]


def attention_flops(shape: dict, square_lengths: int, passes: float = 6) -> float:
    """Causal attention over examples whose squared lengths sum to `square_lengths`: `passes` x n^2 x heads x
    head_dim per layer (6: forward 2 + backward 4; 2: a forward pass alone)."""
    return passes * square_lengths * shape["hidden_size"] * shape["num_hidden_layers"]


def model_flops(shape: dict, counts: StepCounts) -> float:
    """The step's work where the tool does it (the LM head on labelled positions only).

    >>> shape = dict(hidden_size=4, intermediate_size=8, num_attention_heads=2, num_key_value_heads=2,
    ...              num_hidden_layers=1, vocab_size=10)
    >>> linear_params(shape), head_params(shape)
    (160, 40)
    >>> model_flops(shape, StepCounts(tokens=3, labelled=1, square_lengths=9))
    2296
    """
    return (4 * linear_params(shape) * counts.computed + attention_flops(shape, counts.square_lengths)
            + 4 * head_params(shape) * counts.labelled)


def executed_flops(shape: dict, counts: StepCounts, *, checkpointed_layers: int, head_recomputed: bool) -> float:
    """model_flops + the recomputed forward of `checkpointed_layers` layers + (head_recomputed) the LM head's
    forward product again in its backward.

    >>> shape = dict(hidden_size=4, intermediate_size=8, num_attention_heads=2, num_key_value_heads=2,
    ...              num_hidden_layers=1, vocab_size=10)
    >>> counts = StepCounts(tokens=3, labelled=1, square_lengths=9)
    >>> executed_flops(shape, counts, checkpointed_layers=0, head_recomputed=False) == model_flops(shape, counts)
    True
    >>> executed_flops(shape, counts, checkpointed_layers=1, head_recomputed=True) - model_flops(shape, counts)
    1112.0
    """
    fraction = checkpointed_layers / shape["num_hidden_layers"]
    recompute = fraction * (2 * linear_params(shape) * counts.computed + attention_flops(shape, counts.square_lengths, 2))
    return model_flops(shape, counts) + recompute + (2 * head_params(shape) * counts.labelled if head_recomputed else 0)


def old_flops(shape: dict, counts: StepCounts) -> float:
    """Issue 11's count: the LM head on every real token.

    >>> shape = dict(hidden_size=4, intermediate_size=8, num_attention_heads=2, num_key_value_heads=2,
    ...              num_hidden_layers=1, vocab_size=10)
    >>> old_flops(shape, StepCounts(tokens=3, labelled=1, square_lengths=9)) - 2296.0  # the head on 2 more tokens
    320.0
    """
    return model_flops(shape, StepCounts(counts.tokens, counts.tokens, counts.square_lengths, counts.positions))


def utilisation(flops: float, tokens: int, tokens_per_second: float, matmul_tflops: float) -> float:
    """FLOPs done over `tokens` tokens, at `tokens_per_second`, as a fraction of the measured matmul rate.

    >>> utilisation(2e12, 1000, 500.0, 1.0)
    1.0
    """
    return flops / tokens * tokens_per_second / (matmul_tflops * 1e12)
