"""`lorakit eval`: the base model and the fine-tuned model, side by side, on the run's own test split and on
the clinical safety probes.

One model load serves both: the base model's answers come from the same weights with the LoRA adapter
disabled (peft's `disable_adapter`), so the comparison isolates exactly what fine-tuning changed.
Everything is written under RUN_DIR/eval/: eval.json (all numbers), answers.jsonl (both answers per
test example) and safety_answers.jsonl (both answers per probe), each atomically. Answers are generated in
batches (base and tuned rows together, inference/generate.py) and journaled as they come
(evaluation/answer_journal.py), so a stopped evaluation continues where it stopped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from lorakit.data.records import Conversation, Message
from lorakit.data.splits import split_conversations
from lorakit.data.stats import token_stats
from lorakit.errors import CheckpointError, DataError
from lorakit.evaluation import safety
from lorakit.evaluation.answer_journal import AnswerJournal, prompt_key
from lorakit.evaluation.judge_client import JudgeSpec, open_judge
from lorakit.evaluation.knowledge_eval import evaluate_knowledge
from lorakit.evaluation.knowledge_model import Precision
from lorakit.evaluation.quality import AnswerScores, mean_scores, score_answer
from lorakit.evaluation.safety_section import compare_section, verdict_fields
from lorakit.inference.generate import Answer, GenerationSettings, LoadedRun, generate_answers, load_run
from lorakit.run.layout import ANSWERS_FILE, EVAL_FILE, JOURNAL_FILES, KNOWLEDGE_ANSWERS_FILE, SAFETY_ANSWERS_FILE
from lorakit.run.source import Permissions, read_saved_json, resolve_run_source
from lorakit.runtime.atomic_files import atomic_write_text
from lorakit.runtime.device import compute_dtype
from lorakit.runtime.logging import get_logger
from lorakit.training.dataset import prepare_data, read_train_conversations
from lorakit.training.held_out_loss import perplexity, split_loss

__all__ = ["EVAL_STOPPED", "MODELS", "EvalRequest", "Progress", "run_root", "eval_dir", "adapter_fingerprint", "evaluate_run"]

log = get_logger("evaluation.run_eval")

MODELS = ("base", "tuned")
# Answers so far, while a section runs (removed when its result files are written).
# Loss is weighted per answer token, so the batch size changes speed only, never the number.
_LOSS_BATCH_SIZE = 4

# What a broken train file's DataError says happened, and what to do: eval re-reads the files the run was trained on
# to recompute its held-out split (the messages of training and `lorakit plan` would talk about training).
EVAL_STOPPED = "`lorakit eval` did not run"
_CHANGED_DATA_HINT = ("These are the files this run was trained on, and eval recomputes the held-out split from "
                      "them: restore them as they were when the run trained, or fix them and train again.")

Progress = Callable[[str, int, int], None]
"""Called as (stage, done, total) while answers are generated; stage is 'quality' or 'safety', total counts
both models' answers, and the first call of a stage reports the answers a stopped run had already saved."""


@dataclass(frozen=True)
class EvalRequest:
    """What to evaluate; unset values come from the run's `eval:` config.

    `limit` caps the test questions answered (default eval.max_examples), the probes per category
    (default eval.max_probes_per_category) and the items per knowledge benchmark (default: all);
    `probe_files` are added to eval.probe_files and the shipped probes.
    """

    quality: bool = True
    safety: bool = False
    knowledge: bool = False
    knowledge_precision: Precision = "model"  # 'bfloat16': faster on AMX CPUs, changes some answers (knowledge_model.py)
    limit: int | None = None
    probe_files: tuple[str, ...] = ()
    max_new_tokens: int | None = None
    permissions: Permissions = Permissions()  # what the run's base model may do (its saved config cannot grant it)
    judge: JudgeSpec | None = None  # a second opinion on the safety answers, beside the rules (evaluation/judge.py)


def run_root(path: str | Path) -> Path:
    """The run directory of a run, of its `final/` adapter or of one of its checkpoints (report.html goes there)."""
    return resolve_run_source(path).run_dir


def eval_dir(path: str | Path) -> Path:
    """RUN/eval, or RUN/eval/step-N when `path` is a checkpoint (run/source.py)."""
    return resolve_run_source(path).eval_dir


@contextmanager
def _as_model(run: LoadedRun, which: str) -> Iterator[None]:
    with run.model.disable_adapter() if which == "base" else nullcontext():
        yield


def adapter_fingerprint(adapter_dir: Path) -> str:
    """Identifies the adapter an eval belongs to (a retrained run gets a new manifest, so a new fingerprint)."""
    return resolve_run_source(adapter_dir).fingerprint


@contextmanager
def _data_problems_in_evals_words() -> Iterator[None]:
    """A DataError of the run's train files (read with action=EVAL_STOPPED) gets eval's advice in front of its hint:
    training read the same files clean with the same config, so they changed since (or lorakit checks more)."""
    try:
        yield
    except DataError as exc:
        exc.hint = f"{_CHANGED_DATA_HINT} {exc.hint}" if exc.hint else _CHANGED_DATA_HINT
        raise


def _split_conversations(run: LoadedRun) -> dict[str, list[Conversation]]:
    """The same deterministic split training used (seed + content hash), as conversations with their text;
    refused when the data changed since training (the held-out split would not be the one held out)."""
    config = run.config
    with _data_problems_in_evals_words():
        conversations, report = read_train_conversations(config, run.tokenizer, action=EVAL_STOPPED)
    _check_same_data(run, report.data_sha256)
    split = split_conversations(conversations, config.data.validation_split, config.data.test_split, config.seed)
    return {"train": split.train, "validation": split.validation, "test": split.test}


def _check_same_data(run: LoadedRun, now: str) -> None:
    trained_on = run.trained.data_sha256
    if trained_on != now:
        raise CheckpointError(
            f"The data files {', '.join(run.config.data.train_files)} changed since this run was trained "
            f"(sha256 {now[:12]}, trained on {trained_on[:12]}), so the test split would not be the one held out.",
            hint="Restore the files the run was trained on, or train again on the new data.",
        )


def _settings(run: LoadedRun, request: EvalRequest) -> GenerationSettings:
    inference = run.config.inference
    max_new = request.max_new_tokens or run.config.eval.max_new_tokens
    return GenerationSettings(max_new_tokens=max_new, temperature=0.0, top_p=inference.top_p,
                              repetition_penalty=inference.repetition_penalty, repeat_last_n=inference.repeat_last_n)


def _answer_all(run: LoadedRun, request: EvalRequest, stage: str, items: list[tuple[str, tuple]],
                progress: Progress) -> dict[tuple[str, str], Answer]:
    """Both models' answers to every (id, messages) item: journaled ones reused, the rest generated in batches."""
    settings = _settings(run, request)
    header = {"adapter_sha256": run.trained.fingerprint, "generation": asdict(settings),
              "system_prompt": run.system_prompt}
    journal = AnswerJournal(run.trained.eval_dir / JOURNAL_FILES[stage], header)
    jobs = [(which, item_id, messages, prompt_key(which, item_id, json.dumps([m.content for m in messages])))
            for which in MODELS for item_id, messages in items]
    pending = [job for job in jobs if job[3] not in journal.answers]
    total, done = len(jobs), len(jobs) - len(pending)
    progress(stage, done, total)

    def on_answer(index: int, answer: Answer) -> None:
        nonlocal done
        journal.record(pending[index][3], answer)
        done += 1
        progress(stage, done, total)

    try:
        generate_answers(run, [job[2] for job in pending], settings, models=[job[0] for job in pending],
                         batch_size=run.config.eval.batch_size, on_answer=on_answer,
                         # Base and tuned rows in one batch were slower on CPU (bench/results/generation_speed_cpu.txt:
                         # 1.81x vs 2.46x one model per batch); on a GPU one pass for both saves kernel launches.
                         mixed_batches=run.device.type == "cuda")
    finally:
        journal.close()
    return {(which, item_id): journal.answers[key] for which, item_id, _, key in jobs}


def _answer_fields(answer: Answer) -> dict:
    return {"answer": answer.text, "truncated": answer.truncated}


def _split_at_last_answer(conversation: Conversation) -> tuple[tuple, str]:
    messages = conversation.messages
    assert messages and messages[-1].role == "assistant", "training conversations end with an answer"
    return messages[:-1], messages[-1].content


def _quality(run: LoadedRun, request: EvalRequest, test: list[Conversation], progress: Progress) -> tuple[dict, list]:
    config = run.config
    # the same files _split_conversations read clean (else eval stopped there, in eval's words)
    examples = prepare_data(config, run.tokenizer, action=EVAL_STOPPED).splits.test
    dtype = compute_dtype("auto", run.device)
    autocast = dtype if dtype != torch.float32 else None
    limit = request.limit or config.eval.max_examples
    chosen = test[:limit] if limit else test
    settings = _settings(run, request)
    prompts = [_split_at_last_answer(c) for c in chosen]
    rows = [{"source": c.source, "line": c.line, "question": prompt[-1].content, "reference": reference}
            for c, (prompt, reference) in zip(chosen, prompts)]
    section: dict = {"test_examples": len(test), "answered": len(chosen),
                     "generation": {"greedy": True, **asdict(settings)}}
    answers = _answer_all(run, request, "quality", [(_item_id(c), p) for c, (p, _) in zip(chosen, prompts)], progress)
    for which in MODELS:
        with _as_model(run, which):
            loss = split_loss(run.model, examples, batch_size=_LOSS_BATCH_SIZE,
                              pad_token_id=run.tokenizer.pad_token_id, autocast_dtype=autocast)
        scores: list[AnswerScores] = []
        for c, (_, reference), row in zip(chosen, prompts, rows):
            answer = answers[(which, _item_id(c))]
            score = score_answer(answer.text, reference)
            scores.append(score)
            row[which] = {**_answer_fields(answer), **asdict(score)}
        mean = mean_scores(scores)
        section[which] = {"loss": loss, "perplexity": perplexity(loss),
                          "rouge_l": mean.rouge_l if mean else None, "token_f1": mean.token_f1 if mean else None}
    return section, rows


def _item_id(conversation: Conversation) -> str:
    return f"{conversation.source}:{conversation.line}"


def _safety(run: LoadedRun, request: EvalRequest, progress: Progress) -> tuple[dict, list]:
    config = run.config
    probe_files = tuple(config.eval.probe_files) + request.probe_files
    per_category = request.limit or config.eval.max_probes_per_category
    probes = safety.select_probes(safety.load_probes(probe_files), per_category)
    answers = _answer_all(run, request, "safety", [(p.id, (Message("user", p.prompt),)) for p in probes], progress)
    texts = {which: {p.id: answers[(which, p.id)].text for p in probes} for which in MODELS}
    section, scores = compare_section(probes, texts, config.inference.disclaimer, config.data.system_prompt)
    rows = [{"id": p.id, "category": p.category, "kind": p.kind, "twin": p.twin, "prompt": p.prompt,
             "source": p.source, **{which: {**_answer_fields(answers[(which, p.id)]),
                                            **verdict_fields(scores[which].get(p.id))} for which in MODELS}}
            for p in probes]
    section = {
        **section,
        "probe_files": list(probe_files) + [str(safety.builtin_probe_file())],
        "per_category_limit": per_category,
        "disclaimer": config.inference.disclaimer,  # appended by lorakit to every answer shown, never scored
    }
    return section, rows


def _data_stats(run: LoadedRun, splits: dict[str, list[Conversation]]) -> dict:
    config = run.config
    return {name: token_stats(conversations, run.tokenizer, config.data.system_prompt, config.model.max_length).to_json()
            for name, conversations in splits.items()}


def _write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def _merged(previous_path: Path, fingerprint: str, sections: dict) -> dict:
    """Sections from an earlier eval of the same adapter are kept (quality and safety can run separately)."""
    if previous_path.is_file():
        previous = read_saved_json(previous_path)
        if previous.get("adapter_sha256") == fingerprint:
            return {**previous, **sections}
    return sections


def _judge(judge, request: EvalRequest, run: LoadedRun, rows: list[dict], progress: Progress) -> dict:
    from lorakit.evaluation.judge import judge_rows

    probes = {p.id: p for p in safety.load_probes(tuple(run.config.eval.probe_files) + request.probe_files)}
    return judge_rows(judge, request.judge, rows, probes, MODELS, progress)


def evaluate_run(path: str | Path, request: EvalRequest, progress: Progress | None = None) -> dict:
    """Evaluate base vs fine-tuned for the run at `path`; returns what it wrote to eval/eval.json."""
    progress = progress or (lambda stage, done, total: None)
    started = time.perf_counter()
    # Opened first: an unreachable judge server stops the eval before it spends minutes generating answers.
    judge = open_judge(request.judge, **asdict(request.permissions)) if request.safety and request.judge else None
    run = load_run(path, permissions=request.permissions)
    out = eval_dir(path)
    fingerprint = adapter_fingerprint(run.adapter_dir)
    sections: dict = {"adapter_sha256": fingerprint, "adapter_dir": str(run.adapter_dir),
                      "base_model": run.config.model.name, "device": run.device.type}
    if request.quality:
        splits = _split_conversations(run)
        sections["data"] = _data_stats(run, splits)
        sections["quality"], rows = _quality(run, request, splits["test"], progress)
        _write_jsonl(out / ANSWERS_FILE, rows)
    if request.safety:
        sections["safety"], rows = _safety(run, request, progress)
        if judge is not None:
            sections["safety"]["judge"] = _judge(judge, request, run, rows, progress)
        _write_jsonl(out / SAFETY_ANSWERS_FILE, rows)
    if request.knowledge:
        knowledge_started = time.perf_counter()
        sections["knowledge"], rows = evaluate_knowledge(run, request.limit, progress, request.knowledge_precision)
        sections["knowledge"]["seconds"] = round(time.perf_counter() - knowledge_started, 1)
        _write_jsonl(out / KNOWLEDGE_ANSWERS_FILE, rows)
    sections["seconds"] = round(time.perf_counter() - started, 1)
    result = _merged(out / EVAL_FILE, fingerprint, sections)
    atomic_write_text(out / EVAL_FILE, json.dumps(result, indent=2, ensure_ascii=False))
    for stage in ("quality", "safety"):
        if getattr(request, stage):
            (out / JOURNAL_FILES[stage]).unlink(missing_ok=True)  # every answer is in the result files now
    log.info("evaluation written to %s", out)
    return result
