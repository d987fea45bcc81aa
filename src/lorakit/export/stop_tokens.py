"""The end-of-turn token of a chat template, and every id that should stop generation."""

from __future__ import annotations

__all__ = ["end_of_turn_token", "stop_token_ids"]

_PROBE = [{"role": "user", "content": "ping"}, {"role": "assistant", "content": "pong"}]


def end_of_turn_token(tokenizer) -> tuple[str, int]:
    """The first special token the template writes after an assistant message (ChatML: <|im_end|>,
    Phi-4: <|end|>): the token a fine-tuned model emits to end its turn, which exports must stop on."""
    text = tokenizer.apply_chat_template(_PROBE, tokenize=False)
    tail = text[text.rindex("pong") + len("pong"):]
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    for token_id in tokenizer(tail, add_special_tokens=False)["input_ids"]:
        if token_id in special:
            return tokenizer.convert_ids_to_tokens(token_id), token_id
    raise ValueError(f"the chat template writes no special token after an assistant message ({tail!r})")


def stop_token_ids(tokenizer, generation_eos: int | list[int] | None = None) -> list[int]:
    """eos, the end-of-turn token and any eos ids of the model's generation config, sorted, without repeats."""
    ids = {tokenizer.eos_token_id, end_of_turn_token(tokenizer)[1]}
    ids.update(generation_eos if isinstance(generation_eos, list) else [generation_eos])
    return sorted(i for i in ids if i is not None)
