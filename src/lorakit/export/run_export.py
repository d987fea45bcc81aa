"""`lorakit export`: one finished run -> a new folder in one format, written atomically.

Every export checks free disk space first, stages into a hidden sibling folder and renames it into place
only when complete, so a failure (at a named step: load, merge, convert, quantize, write) leaves neither a
partial output nor any change in the run directory, and the same command can simply be run again.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import nullcontext
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lorakit.config import dump_config
from lorakit.errors import ConfigError, DiskFullError, OutputExistsError
from lorakit.export.disk_estimate import estimated_export_bytes
from lorakit.export.gguf_file import GGUF_QUANTS, write_gguf
from lorakit.export.fidelity import (
    QUESTIONS,
    fidelity_card_lines,
    measure_fidelity,
    read_back,
    reference_answers,
    skipped_fidelity,
)
from lorakit.export.generation_settings import generation_card_lines, modelfile_parameters
from lorakit.export.merge import SAVE_DTYPES, attach_adapter, load_base_for_merge, merge_run, save_dtype, save_merged
from lorakit.run.model_card import model_card
from lorakit.evaluation.card_section import card_evaluation
from lorakit.export.ollama import modelfile_text, turn_format
from lorakit.export.public_copy import public_config, public_manifest
from lorakit.export.steps import ExportSteps
from lorakit.export.stop_tokens import end_of_turn_token
from lorakit.run.source import Permissions, RunSource, read_finished_run, refuse_saved_permissions
from lorakit.model.load import load_tokenizer, resolve_model_source
from lorakit.runtime.atomic_files import atomic_directory, remove_abandoned_staging
from lorakit.run.lock import hold_run_lock
from lorakit.run.layout import CONFIG, EXPORT, FINAL, MANIFEST, MODEL_CARD
from lorakit.runtime.logging import get_logger

__all__ = ["FORMATS", "ExportRequest", "ExportResult", "default_output", "export_run"]

log = get_logger("export.run_export")

FORMATS = ("merged", "gguf", "ollama", "adapter")
# README.md: peft's empty template, replaced by a real card; config.yaml and manifest.json name the data files
# and local paths, so the export gets public copies of them (export/public_copy.py).
_ADAPTER_SKIP = {MODEL_CARD, CONFIG, MANIFEST}


@dataclass(frozen=True)
class ExportRequest:
    format: str
    output: Path | None = None
    quant: str = "f16"  # gguf and ollama only
    dtype: str = "auto"  # merged only: auto (fp16 when the weights fit it, else fp32), fp16, bf16 or fp32
    fidelity: bool = True  # compare the written model with the run (export/fidelity.py); --skip-fidelity
    overwrite: bool = False
    permissions: Permissions = Permissions()  # what the base model may do (merged, gguf, ollama load it)


@dataclass
class ExportResult:
    output: Path
    files: list[str]
    notes: list[str] = field(default_factory=list)
    fidelity: dict | None = None  # Fidelity.to_json() or skipped_fidelity(); None for an adapter (the run's own files)
    card_sections: list[tuple[str, list[str]]] = field(default_factory=list)  # for a card written again (push)


@dataclass
class _Written:
    """What a format's writer reports besides its files."""

    notes: list[str]
    fidelity: dict | None = None
    dtype: str | None = None  # merged: the dtype the weights are stored in


def default_output(run: RunSource, format: str) -> Path:
    return run.run_dir / EXPORT / format


def _check_request(run: RunSource, request: ExportRequest, output: Path) -> None:
    problems = []
    if request.format not in FORMATS:
        problems.append(f"--format: '{request.format}' is not one of {', '.join(FORMATS)}")
    if request.dtype not in ("auto", *SAVE_DTYPES):
        problems.append(f"--dtype: '{request.dtype}' is not one of auto, {', '.join(SAVE_DTYPES)}")
    if request.quant not in GGUF_QUANTS:
        problems.append(f"--quant: '{request.quant}' is not one of {', '.join(GGUF_QUANTS)}")
    if output.resolve().is_relative_to(run.adapter_dir.resolve()):
        problems.append(f"--output: {output} is inside the run's adapter folder {run.adapter_dir}; pick another folder")
    elif run.run_dir.resolve().is_relative_to(output.resolve()):  # --overwrite would delete the run with it
        problems.append(f"--output: {output} is or contains the run folder {run.run_dir}, which the export would "
                        f"replace (checkpoints, adapter and metrics included); pick another folder, e.g. the "
                        f"default {default_output(run, request.format)}")
    if problems:
        raise ConfigError("lorakit export", problems)
    if output.exists() and not request.overwrite:
        raise OutputExistsError(f"{output} already exists; the export was not started.",
                                hint="Pass --overwrite to replace it, or --output to write somewhere else.")


def _check_free_space(output: Path, needed: int) -> None:
    existing = next(p for p in (output, *output.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if free < needed:
        raise DiskFullError(
            f"Not enough free disk space for this export: it needs about {needed / 2**30:.2f} GiB and "
            f"{existing} has {free / 2**30:.2f} GiB free. Nothing was written.",
            hint="Free some space, or pass --output on a disk with more room (or a smaller --quant).")


def _export_adapter(run: RunSource, staging: Path, request: ExportRequest, steps: ExportSteps) -> _Written:
    with steps.step("load", f"adapter files in {run.adapter_dir}"):
        files = sorted(p for p in run.adapter_dir.iterdir() if p.is_file() and p.name not in _ADAPTER_SKIP)
    with steps.step("write", f"{len(files)} adapter files, config and manifest without data file names or paths"):
        for path in files:
            shutil.copy2(path, staging / path.name)
        (staging / CONFIG).write_text(dump_config(public_config(run.config, run.manifest)))
        (staging / MANIFEST).write_text(json.dumps(public_manifest(run.manifest), indent=2))
    return _Written([])


def _merged(run: RunSource, steps: ExportSteps, request: ExportRequest):
    """The merged model (float32), and the run's own answers to compare the export with (None: --skip-fidelity)."""
    with steps.step("load", f"base model {run.config.model.name} (unquantized, float32, CPU) and adapter"):
        base = load_base_for_merge(run)
        adapted = attach_adapter(run, base)
    reference = None
    if request.fidelity:
        with steps.step("measure", f"the run's greedy answers to {QUESTIONS} questions (base + adapter, float32)"):
            reference = reference_answers(run, base[0], adapted)
    with steps.step("merge", f"adapter {run.adapter_dir}"):
        return merge_run(run, base, adapted), reference


def _fidelity(reference, steps: ExportSteps, folder: Path, gguf_name: str | None, label: str) -> dict:
    if reference is None:
        return skipped_fidelity()
    with steps.step("measure", f"{gguf_name or 'the merged folder'} read back and compared with the run"):
        fidelity = measure_fidelity(reference, read_back(folder, gguf_name), label)
    log.info("%s", fidelity.summary())
    if fidelity.warning:
        log.warning("%s", fidelity.warning)
    return fidelity.to_json()


def _export_merged(run: RunSource, staging: Path, request: ExportRequest, steps: ExportSteps) -> _Written:
    merged, reference = _merged(run, steps, request)
    dtype, notes = save_dtype(merged.model, request.dtype)
    with steps.step("write", f"{str(dtype).removeprefix('torch.')} safetensors, tokenizer, generation config"):
        save_merged(merged, staging, dtype)
    notes = merged.notes + notes
    del merged  # the read-back model takes its place in memory
    fidelity = _fidelity(reference, steps, staging, None, "merged")
    return _Written(notes, fidelity, str(dtype).removeprefix("torch."))


def _gguf_name(run: RunSource, quant: str) -> str:
    return f"{run.run_dir.name}-{quant}.gguf"


def _export_gguf(run: RunSource, staging: Path, request: ExportRequest, steps: ExportSteps) -> _Written:
    merged, reference = _merged(run, steps, request)
    name = _gguf_name(run, request.quant)
    write_gguf(merged, staging / name, request.quant, steps)
    notes = merged.notes + [f"GGUF weights: {request.quant} (vectors such as norms stay float32)."]
    del merged  # the read-back model takes its place in memory
    return _Written(notes, _fidelity(reference, steps, staging, name, request.quant))


def _export_ollama(run: RunSource, staging: Path, request: ExportRequest, steps: ExportSteps) -> _Written:
    written = _export_gguf(run, staging, request, steps)
    with steps.step("convert", "Ollama TEMPLATE from the chat template"):
        tokenizer = load_tokenizer(resolve_model_source(run.config.model), run.config.model)
        end_of_turn = end_of_turn_token(tokenizer)[0]
        inference = run.config.inference
        text = modelfile_text(
            _gguf_name(run, request.quant), turn_format(tokenizer, end_of_turn), run.system_prompt,
            list(dict.fromkeys([end_of_turn, tokenizer.eos_token])),
            modelfile_parameters(inference),
            header=f"Made by lorakit from {run.run_dir.name}. Create it with: ollama create "
                   f"{run.run_dir.name.lower()} -f Modelfile\n{inference.disclaimer}")
    with steps.step("write", "Modelfile"):
        (staging / "Modelfile").write_text(text)
    return written


_WRITERS: dict[str, Callable[[RunSource, Path, ExportRequest, ExportSteps], _Written]] = {
    "adapter": _export_adapter, "merged": _export_merged, "gguf": _export_gguf, "ollama": _export_ollama,
}


def export_run(path: str | Path, request: ExportRequest,
               on_step: Callable[[str, str], None] | None = None) -> ExportResult:
    """Export the run at `path`; on_step(step, description) is called as each step starts."""
    run = read_finished_run(path)
    output = Path(request.output) if request.output is not None else default_output(run, request.format)
    with _holding_run(run):  # a train (or export) of the same run waits: never a final/ deleted mid-read
        # A killed export's hidden staging folder (a merged model: hundreds of MiB) goes first; under the run's
        # lock every leftover of RUN/export/, elsewhere only those of this output's name.
        default_parent = output.parent == default_output(run, request.format).parent
        remove_abandoned_staging(output.parent, None if default_parent else output.name)
        return _export_locked(run, request, output, on_step)


def _holding_run(run: RunSource):
    """The run lock (run/lock.py) of a run folder; nothing for a copied adapter folder (no run to guard,
    and a lock file would travel with its copies) or a run folder this user cannot write (nobody trains there)."""
    if run.adapter_dir != run.run_dir / FINAL or not os.access(run.run_dir, os.W_OK):
        return nullcontext()
    return hold_run_lock(run.run_dir, "exporting")


def _export_locked(run: RunSource, request: ExportRequest, output: Path,
                   on_step: Callable[[str, str], None] | None) -> ExportResult:
    _check_request(run, request, output)
    if request.format != "adapter":  # the others load the base model
        refuse_saved_permissions(run.config, run.adapter_dir / CONFIG, request.permissions)
    steps = ExportSteps(on_step)
    with steps.step("check", "free disk space"):
        _check_free_space(output, estimated_export_bytes(run, request.format, request.quant, request.dtype))
    missing = [p for p in (output.parent, *output.parent.parents) if not p.exists()]
    try:
        with atomic_directory(output) as staging:
            written = _WRITERS[request.format](run, staging, request, steps)
            sections = _card_sections(run, request, written)
            with steps.step("write", "model card and export manifest"):
                (staging / MODEL_CARD).write_text(model_card(
                    run, request.format, written.notes, sections=sections, evaluation=card_evaluation(run)))
                (staging / "lorakit_export.json").write_text(json.dumps(_export_manifest(run, request, written), indent=2))
    except BaseException:
        for folder in missing:  # parents this export created (e.g. RUN_DIR/export) go too: nothing is left
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise
    log.info("exported %s to %s", request.format, output)
    return ExportResult(output, sorted(p.name for p in output.iterdir()), written.notes, written.fidelity, sections)


def _card_sections(run: RunSource, request: ExportRequest, written: _Written) -> list[tuple[str, list[str]]]:
    if request.format == "adapter":
        return []
    return [("Export fidelity", fidelity_card_lines(written.fidelity, written.dtype)),
            ("Generation settings", generation_card_lines(run.config.inference))]


def _export_manifest(run: RunSource, request: ExportRequest, written: _Written) -> dict:
    # `lorakit push` uploads this file too: the run's name, not its path; the base model without its local path.
    return {"format": request.format, "quant": request.quant if request.format in ("gguf", "ollama") else None,
            "dtype": written.dtype, "run": run.run_dir.name, "base_model": public_manifest(run.manifest)["base_model"],
            "data_sha256": run.manifest["data"].get("sha256"), "dequantized_base": run.quantized_4bit
            and request.format != "adapter", "notes": written.notes, "fidelity": written.fidelity,
            "versions": run.manifest["versions"]}
