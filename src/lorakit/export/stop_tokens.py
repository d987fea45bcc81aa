"""The end-of-turn token of a chat template, and every id that should stop generation."""

from __future__ import annotations

from lorakit.data.chat_template import end_of_turn_token as template_end_of_turn_token

__all__ = ["end_of_turn_token", "stop_token_ids"]


def end_of_turn_token(tokenizer) -> tuple[str, int]:
    """The special token the template closes each answer with, and its id (ChatML: <|im_end|>, Phi-4: <|end|>):
    the token a fine-tuned model emits to end its turn, which exports must stop on.

    Located by data/chat_template.py, the span check training masks with; a template whose answers it cannot
    locate raises AnswerSpanError (a ValueError)."""
    token = template_end_of_turn_token(tokenizer)
    return token, tokenizer.convert_tokens_to_ids(token)


def stop_token_ids(tokenizer, generation_eos: int | list[int] | None = None) -> list[int]:
    """eos, the end-of-turn token and any eos ids of the model's generation config, sorted, without repeats."""
    ids = {tokenizer.eos_token_id, end_of_turn_token(tokenizer)[1]}
    ids.update(generation_eos if isinstance(generation_eos, list) else [generation_eos])
    return sorted(i for i in ids if i is not None)
