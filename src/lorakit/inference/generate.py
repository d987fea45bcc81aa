"""Load a trained run and generate answers with the same rendering as training (data/render.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from lorakit.config import RunConfig
from lorakit.data.chat_spans import AnswerSpanError
from lorakit.data.chat_template import end_of_turn_token
from lorakit.data.records import Message
from lorakit.data.render import render_prompt_ids
from lorakit.inference.attention_backend import decoding_attention
from lorakit.inference.decode import AnswerRepetitionPenalty, Decoded, FinishReason, GenerationSettings, decode_batch
from lorakit.model.adapter_dtype import cast_adapter_for_inference
from lorakit.model.inference_lora import use_inference_lora
from lorakit.model.joint_rotary import use_joint_rotary
from lorakit.model.load import load_base_model, load_tokenizer, resolve_model_source
from lorakit.model.quantize import nf4_config
from lorakit.run.layout import CONFIG
from lorakit.run.source import Permissions, RunSource, refuse_saved_permissions, resolve_run_source
from lorakit.runtime.device import compute_dtype, pick_device

__all__ = ["LoadedRun", "GenerationSettings", "Answer", "MODELS", "resolve_adapter_dir", "load_run", "stream_answer",
           "generate_answer", "generate_answers", "stop_token_ids", "end_of_turn_ids", "with_disclaimer"]

MODELS = ("base", "tuned")
"""What `generate_answers` can answer with: the base model (adapter switched off) or the fine-tuned one."""


@dataclass(frozen=True)
class Answer:
    """A decoded answer (stripped, special tokens dropped), its raw new token ids and why it ended."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: FinishReason

    @property
    def truncated(self) -> bool:
        """Cut at max_new_tokens before the model ended its turn."""
        return self.finish_reason == "length"


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


def load_run(path: str | Path, *, base_only: bool = False, permissions: Permissions = Permissions()) -> LoadedRun:
    """Base model + the run's adapter (or the base model alone, for comparisons), on GPU when present.

    `path` is a run folder, its final/ adapter, or a checkpoint of a run that is still training. Its saved config
    may ask for remote code or pickled weights; only `permissions` allows them (ConfigError otherwise)."""
    trained = resolve_run_source(path)
    refuse_saved_permissions(trained.config, trained.adapter_dir / CONFIG, permissions)
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
        cast_adapter_for_inference(model, dtype)  # no fp32 LoRA products or per-module casts in a decoding step
        use_inference_lora(model)  # 2 kernels per LoRA layer instead of 4 (model/inference_lora.py)
    use_joint_rotary(model)  # Phi3: q and k rotated as one tensor, 6 kernels per layer instead of 12
    model.eval()
    return LoadedRun(model, tokenizer, config, None if base_only else trained.adapter_dir, device, trained)


def stop_token_ids(run: LoadedRun) -> list[int]:
    """End-of-turn ids: the tokenizer's eos plus any the model's generation config lists (Phi-4: <|end|>)."""
    return _stop_token_ids(run.model, run.tokenizer)


def _template_end_of_turn_id(tokenizer) -> int | None:
    """The token the chat template ends answers with (with model.chat_template it may not be the eos); located
    once per tokenizer (data/chat_template.py caches it), not once per answer."""
    try:
        return tokenizer.convert_tokens_to_ids(end_of_turn_token(tokenizer))
    except AnswerSpanError:  # a template training would refuse; chat still stops at the eos
        return None


def end_of_turn_ids(model, tokenizer) -> list[int]:
    """`stop_token_ids` for a model loaded without a run (the judge of `lorakit eval --judge`)."""
    return _stop_token_ids(model, tokenizer)


def _stop_token_ids(model, tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id, _template_end_of_turn_id(tokenizer)}
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in ids if i is not None)


def _generate_kwargs(run: LoadedRun, messages: tuple[Message, ...], settings: GenerationSettings) -> dict:
    from transformers import LogitsProcessorList

    ids = render_prompt_ids(messages, run.tokenizer, run.system_prompt)
    input_ids = torch.tensor([ids], device=run.device)
    sampling = settings.temperature > 0
    kwargs = dict(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=settings.max_new_tokens,
        do_sample=sampling,
        logits_processor=LogitsProcessorList([AnswerRepetitionPenalty(len(ids), settings.repetition_penalty,
                                                                      settings.repeat_last_n)]),
        eos_token_id=_stop_token_ids(run.model, run.tokenizer),
        pad_token_id=run.tokenizer.pad_token_id,
    )
    if sampling:
        kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    return kwargs


class _Cancelled:
    """A transformers stopping criterion that ends generation once `event` is set (Ctrl-C, a client gone)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def stream_answer(
    run: LoadedRun,
    messages: tuple[Message, ...],
    settings: GenerationSettings,
    *,
    stopping_criteria: list | None = None,
    on_end: Callable[[Decoded], None] | None = None,
) -> Iterator[str]:
    """Yield the answer's text as it is generated (new tokens only, special tokens dropped).

    `stopping_criteria` (transformers `StoppingCriteria`) are checked after every new token besides the stop
    tokens; `lorakit serve` uses one to stop when its client leaves. The generation thread is joined when the
    iterator ends, and also when it is closed early (`close()`, a `break`, Ctrl-C in the consumer): then the
    thread is told to stop after its current token, so it never runs on into the next question.
    `on_end` receives the new token ids and why generation ended ("stop", "length" or "cancelled").
    """
    from transformers import StoppingCriteriaList, TextIteratorStreamer

    streamer = TextIteratorStreamer(run.tokenizer, skip_prompt=True, skip_special_tokens=True)
    kwargs = _generate_kwargs(run, messages, settings)
    cancel = threading.Event()
    kwargs["stopping_criteria"] = StoppingCriteriaList([*(stopping_criteria or []), _Cancelled(cancel)])
    errors: list[BaseException] = []
    outputs: list[torch.Tensor] = []

    def work() -> None:
        try:
            with torch.no_grad(), decoding_attention():
                outputs.append(run.model.generate(**kwargs, streamer=streamer))
        except BaseException as exc:  # surfaced in the caller's thread below
            errors.append(exc)
            streamer.end()

    thread = threading.Thread(target=work, name="lorakit-generate", daemon=True)
    thread.start()
    try:
        yield from streamer
    finally:
        cancel.set()  # a no-op once generation has ended; otherwise it stops after the current token
        thread.join()
    if errors:
        raise errors[0]
    if on_end is not None:
        new_ids = tuple(outputs[0][0, kwargs["input_ids"].shape[1]:].tolist())
        on_end(Decoded(new_ids, _finish_reason(new_ids, stop_token_ids(run), settings)))


def _finish_reason(new_ids: Sequence[int], stops: Sequence[int], settings: GenerationSettings) -> FinishReason:
    if new_ids and new_ids[-1] in stops:
        return "stop"
    return "length" if len(new_ids) >= settings.max_new_tokens else "cancelled"


@torch.no_grad()
def generate_answer(run: LoadedRun, messages: tuple[Message, ...], settings: GenerationSettings) -> tuple[str, list[int]]:
    """The decoded answer and its raw new token ids (which end with the end-of-turn id when the model stopped)."""
    kwargs = _generate_kwargs(run, messages, settings)
    with decoding_attention():
        output = run.model.generate(**kwargs)
    new_ids = output[0, kwargs["input_ids"].shape[1]:].tolist()
    return run.tokenizer.decode(new_ids, skip_special_tokens=True).strip(), new_ids


def generate_answers(
    run: LoadedRun,
    conversations: Sequence[tuple[Message, ...]],
    settings: GenerationSettings,
    *,
    models: Sequence[str] | None = None,
    batch_size: int = 32,
    mixed_batches: bool = True,
    on_answer: Callable[[int, Answer], None] | None = None,
    cancel: threading.Event | None = None,
) -> list[Answer]:
    """Answer many conversations in left-padded batches (data/render.py renders each prompt, as training did).

    `models[i]` ("base" or "tuned", default: tuned when the run has an adapter) picks who answers
    conversation i. With `mixed_batches`, base and tuned rows share a batch (peft's mixed-batch LoRA,
    "__base__" = adapter off); otherwise each model answers in its own batches. Prompts are sorted by
    length so that a batch holds little padding. `on_answer(i, answer)` fires as soon as answer i is
    complete; greedy answers equal `generate_answer` one at a time.
    """
    prompts = [render_prompt_ids(tuple(c), run.tokenizer, run.system_prompt) for c in conversations]
    models = list(models) if models is not None else ["tuned" if run.adapter_dir else "base"] * len(prompts)
    assert len(models) == len(prompts) and set(models) <= set(MODELS), "one model, base or tuned, per conversation"
    if "tuned" in models and run.adapter_dir is None:
        raise ValueError("this run was loaded with base_only=True: it has no fine-tuned model to answer with")
    answers: list[Answer | None] = [None] * len(prompts)
    groups = [list(range(len(prompts)))] if mixed_batches else [[i for i, m in enumerate(models) if m == w] for w in MODELS]
    for group in groups:
        order = sorted(group, key=lambda i: len(prompts[i]))
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            _answer_chunk(run, chunk, [prompts[i] for i in chunk], [models[i] for i in chunk], settings, answers,
                          on_answer, cancel)
    return answers


def _answer_chunk(run: LoadedRun, chunk: list[int], prompts: list[list[int]], models: list[str],
                  settings: GenerationSettings, answers: list, on_answer, cancel) -> None:
    def done(row: int, decoded: Decoded) -> None:
        text = run.tokenizer.decode(list(decoded.token_ids), skip_special_tokens=True).strip()
        answers[chunk[row]] = Answer(text, decoded.token_ids, decoded.finish_reason)
        if on_answer is not None:
            on_answer(chunk[row], answers[chunk[row]])

    adapter_names, context = None, nullcontext()
    if run.adapter_dir is not None and len(set(models)) > 1:
        tuned_name = run.model.active_adapter
        adapter_names = [tuned_name if m == "tuned" else "__base__" for m in models]
    elif run.adapter_dir is not None and models[0] == "base":
        context = run.model.disable_adapter()
    with context:
        decode_batch(run.model, prompts, settings, stop_ids=stop_token_ids(run), pad_id=_pad_id(run),
                     device=run.device, adapter_names=adapter_names, on_done=done, cancel=cancel)


def _pad_id(run: LoadedRun) -> int:
    """Any id will do (padded positions are masked and never penalized); the tokenizer's pad, else eos."""
    pad = run.tokenizer.pad_token_id
    return pad if pad is not None else run.tokenizer.eos_token_id


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
