"""What an export recommends for generation, so that llama.cpp, LM Studio and Ollama answer as `lorakit chat` does,
and the chat template that makes the run's system prompt the default.

lorakit's repetition penalty works as llama.cpp's repeat_penalty: over the answer's last `repeat_last_n` tokens,
never the prompt (inference/decode.py). The other samplers llama.cpp and Ollama switch on by default and lorakit
does not have are switched off: top_k (llama.cpp and Ollama: 40) and min_p (llama.cpp: 0.05).
"""

from __future__ import annotations

import gguf

from lorakit.config import InferenceConfig

__all__ = ["modelfile_parameters", "add_sampling_metadata", "generation_card_lines", "template_with_default_system"]


def modelfile_parameters(inference: InferenceConfig) -> dict[str, float]:
    """Ollama PARAMETER name -> value."""
    return {"temperature": inference.temperature, "top_p": inference.top_p, "top_k": 0, "min_p": 0.0,
            "repeat_penalty": inference.repetition_penalty, "repeat_last_n": inference.repeat_last_n}


def add_sampling_metadata(writer: gguf.GGUFWriter, inference: InferenceConfig) -> None:
    """general.sampling.* keys: llama.cpp reads them as the model's default sampling settings."""
    General = gguf.Keys.General
    writer.add_float32(General.SAMPLING_TEMP, inference.temperature)
    writer.add_float32(General.SAMPLING_TOP_P, inference.top_p)
    writer.add_int32(General.SAMPLING_TOP_K, 0)
    writer.add_float32(General.SAMPLING_MIN_P, 0.0)
    writer.add_float32(General.SAMPLING_PENALTY_REPEAT, inference.repetition_penalty)
    writer.add_int32(General.SAMPLING_PENALTY_LAST_N, inference.repeat_last_n)


def generation_card_lines(inference: InferenceConfig) -> list[str]:
    return [
        f"`lorakit chat` samples at temperature {inference.temperature:g} with top-p {inference.top_p:g}; the "
        "`lorakit eval` answers greedily (temperature 0). Both penalize repeats as llama.cpp does: "
        f"repeat_penalty {inference.repetition_penalty:g} over the answer's last {inference.repeat_last_n} tokens, "
        "never the prompt's. To reproduce the evaluated answers:", "",
        f"- llama.cpp: `--temp 0 --top-k 0 --min-p 0 --repeat-penalty {inference.repetition_penalty:g} "
        f"--repeat-last-n {inference.repeat_last_n}` (the GGUF's `general.sampling.*` keys hold the chat settings)",
        "- Ollama: the Modelfile's PARAMETER lines; add `PARAMETER temperature 0` for greedy answers",
        "- The chat template's default system prompt is the run's (used when a request brings none).",
        "- The disclaimer is not added by llama.cpp, LM Studio or Ollama (lorakit appends it to every answer); "
        "show it in the application that uses the model.",
    ]


def _jinja_string(text: str) -> str:
    """A single-quoted Jinja string literal (jinja2 and llama.cpp's minja both read these escapes)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def template_with_default_system(template: str, system_prompt: str) -> str:
    """`template` with the run's system prompt inserted as the first message when the conversation has none,
    so that a runtime rendering a request without a system message (llama.cpp, LM Studio) uses the run's prompt
    instead of the template's own default (SmolLM2: a generic "helpful AI assistant"). Unchanged without one."""
    if not system_prompt:
        return template
    default = (f"{{%- if messages | length == 0 or messages[0]['role'] != 'system' -%}}"
               f"{{%- set messages = [{{'role': 'system', 'content': {_jinja_string(system_prompt)}}}] + messages -%}}"
               "{%- endif %}")
    return default + template
