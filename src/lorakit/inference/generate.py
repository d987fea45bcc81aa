"""Load a trained run and generate answers with the same rendering as training (data/render.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from lorakit.config import RunConfig
from lorakit.data.records import Message
from lorakit.data.render import render_prompt_ids
from lorakit.inference.run_source import RunSource, resolve_run_source
from lorakit.model.load import load_base_model, load_tokenizer, resolve_model_source
from lorakit.model.quantize import nf4_config
from lorakit.runtime.device import compute_dtype, pick_device

__all__ = ["LoadedRun", "GenerationSettings", "resolve_adapter_dir", "load_run", "stream_answer", "generate_answer",
           "with_disclaimer"]


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 200
    temperature: float = 0.0
    top_p: float = 0.9
    repetition_penalty: float = 1.1

    @classmethod
    def from_config(cls, config: RunConfig) -> GenerationSettings:
        i = config.inference
        return cls(i.max_new_tokens, i.temperature, i.top_p, i.repetition_penalty)


@dataclass
class LoadedRun:
    model: torch.nn.Module
    tokenizer: object
    config: RunConfig
    adapter_dir: Path | None
    device: torch.device
    trained: RunSource | None = None  # the adapter's run folder, data hash and eval folder

    @property
    def system_prompt(self) -> str:
        return self.config.data.system_prompt


def resolve_adapter_dir(path: str | Path) -> Path:
    """The adapter folder that `path` names: a run's final/, an adapter folder or a checkpoint (run_source.py)."""
    return resolve_run_source(path).adapter_dir


def load_run(path: str | Path, *, base_only: bool = False) -> LoadedRun:
    """Base model + the run's adapter (or the base model alone, for comparisons), on GPU when present.

    `path` is a run folder, its final/ adapter, or a checkpoint of a run that is still training."""
    trained = resolve_run_source(path)
    config = trained.config
    device = pick_device()
    dtype = compute_dtype("auto", device)
    quantized = trained.quantized_4bit and device.type == "cuda"
    source = resolve_model_source(config.model)
    tokenizer = load_tokenizer(source, config.model)
    model = load_base_model(source, config.model, device, dtype, nf4_config(dtype) if quantized else None)
    if not base_only:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, trained.adapter_dir)
    model.eval()
    return LoadedRun(model, tokenizer, config, None if base_only else trained.adapter_dir, device, trained)


def _template_end_of_turn_id(tokenizer) -> int | None:
    """The token the chat template ends answers with (with model.chat_template it may not be the eos)."""
    from lorakit.data.chat_spans import AnswerSpanError
    from lorakit.data.chat_template import end_of_turn_token

    try:
        return tokenizer.convert_tokens_to_ids(end_of_turn_token(tokenizer))
    except AnswerSpanError:  # a template training would refuse; chat still stops at the eos
        return None


def _stop_token_ids(model, tokenizer) -> list[int]:
    """End-of-turn ids: the tokenizer's eos plus any the model's generation config lists (Phi-4: <|end|>)."""
    ids = {tokenizer.eos_token_id, _template_end_of_turn_id(tokenizer)}
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in ids if i is not None)


def _generate_kwargs(run: LoadedRun, messages: tuple[Message, ...], settings: GenerationSettings) -> dict:
    ids = render_prompt_ids(messages, run.tokenizer, run.system_prompt)
    input_ids = torch.tensor([ids], device=run.device)
    sampling = settings.temperature > 0
    kwargs = dict(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=settings.max_new_tokens,
        do_sample=sampling,
        repetition_penalty=settings.repetition_penalty,
        eos_token_id=_stop_token_ids(run.model, run.tokenizer),
        pad_token_id=run.tokenizer.pad_token_id,
    )
    if sampling:
        kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    return kwargs


def stream_answer(
    run: LoadedRun, messages: tuple[Message, ...], settings: GenerationSettings, *, stopping_criteria: list | None = None
) -> Iterator[str]:
    """Yield the answer's text as it is generated (new tokens only, special tokens dropped).

    `stopping_criteria` (transformers `StoppingCriteria`) are checked after every new token besides the stop
    tokens; `lorakit serve` uses one to stop when its client leaves. Consume the iterator to the end: the
    generation thread is joined there.
    """
    from transformers import StoppingCriteriaList, TextIteratorStreamer

    streamer = TextIteratorStreamer(run.tokenizer, skip_prompt=True, skip_special_tokens=True)
    kwargs = _generate_kwargs(run, messages, settings)
    if stopping_criteria:
        kwargs["stopping_criteria"] = StoppingCriteriaList(stopping_criteria)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            with torch.no_grad():
                run.model.generate(**kwargs, streamer=streamer)
        except BaseException as exc:  # surfaced in the caller's thread below
            errors.append(exc)
            streamer.end()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    yield from streamer
    thread.join()
    if errors:
        raise errors[0]


@torch.no_grad()
def generate_answer(run: LoadedRun, messages: tuple[Message, ...], settings: GenerationSettings) -> tuple[str, list[int]]:
    """The decoded answer and its raw new token ids (which end with the end-of-turn id when the model stopped)."""
    kwargs = _generate_kwargs(run, messages, settings)
    output = run.model.generate(**kwargs)
    new_ids = output[0, kwargs["input_ids"].shape[1]:].tolist()
    return run.tokenizer.decode(new_ids, skip_special_tokens=True).strip(), new_ids


def with_disclaimer(answer: str, disclaimer: str) -> str:
    """Append the educational disclaimer once.

    >>> with_disclaimer("Rest.", "Not advice.")
    'Rest.\\n\\nNot advice.'
    >>> with_disclaimer("Rest.\\n\\nNot advice.", "Not advice.")
    'Rest.\\n\\nNot advice.'
    """
    answer = answer.rstrip()
    if not disclaimer or answer.endswith(disclaimer):
        return answer
    return f"{answer}\n\n{disclaimer}"
