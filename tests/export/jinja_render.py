"""Render a chat template as llama-cpp-python's Jinja2ChatFormatter renders a GGUF's tokenizer.chat_template
(plain jinja2, sandboxed, trim_blocks and lstrip_blocks), without transformers."""

from __future__ import annotations

from jinja2.sandbox import ImmutableSandboxedEnvironment


def render_jinja_template(template: str, messages: list[dict]) -> str:
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return environment.from_string(template).render(messages=messages, add_generation_prompt=True,
                                                    bos_token="", eos_token="<|im_end|>")
