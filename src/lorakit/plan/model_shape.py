"""The numbers of a decoder-only transformer that training memory depends on, read from its config.json alone
(no weights): the memory estimate (plan/memory.py), the sharded one (plan/sharded.py) and the re-plan after an
out-of-memory error (plan/oom.py) all start from this shape.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ModelShape"]

_FUSED_PROJECTION_MODELS = {"phi3"}  # qkv_proj and gate_up_proj are single linear layers


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a decoder-only transformer that memory depends on, read from config.json."""

    model_type: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied_embeddings: bool

    @classmethod
    def from_config(cls, config: dict) -> ModelShape:
        required = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
        missing = [key for key in required if key not in config]
        if missing:
            raise ValueError(f"config.json lacks {', '.join(missing)}; cannot plan memory for this model")
        heads = config["num_attention_heads"]
        return cls(
            model_type=config.get("model_type", "unknown"),
            hidden=config["hidden_size"],
            intermediate=config["intermediate_size"],
            layers=config["num_hidden_layers"],
            heads=heads,
            kv_heads=config.get("num_key_value_heads") or heads,  # absent or null means no grouped-query attention
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            vocab=config["vocab_size"],
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
        )

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each linear layer in one decoder layer, by module name."""
        q, kv, d, i = self.heads * self.head_dim, self.kv_heads * self.head_dim, self.hidden, self.intermediate
        if self.model_type in _FUSED_PROJECTION_MODELS:
            return {"qkv_proj": (d, q + 2 * kv), "o_proj": (q, d), "gate_up_proj": (d, 2 * i), "down_proj": (i, d)}
        return {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d),
                "gate_proj": (d, i), "up_proj": (d, i), "down_proj": (i, d)}

    @property
    def linear_params_per_layer(self) -> int:
        return sum(a * b for a, b in self.linears().values())

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def head_params(self) -> int:
        """The LM head's own parameters (0 when tied to the input embeddings)."""
        return 0 if self.tied_embeddings else self.vocab * self.hidden
