"""`lorakit data ...`: check, redact, describe and split datasets before a GPU is touched."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table
from rich.text import Text

from lorakit.cli.console import console
from lorakit.config import (
    DEFAULT_SYSTEM_PROMPT,
    EMBEDDED_MODEL_ALIAS,
    SEED_MAX,
    DataConfig,
    ModelConfig,
    RunConfig,
    load_config,
)
from lorakit.data.formats import FORMATS
from lorakit.data.issues import DataReport, Issue
from lorakit.errors import ConfigError, DataError, LorakitError

data_app = typer.Typer(help="Validate, scan, redact, describe and split training data.", no_args_is_help=True)

_FORMAT_HELP = f"Record format: auto (detected per file) or one of {', '.join(FORMATS)}. Overrides data.format."
_DEFAULTS = {  # the config's defaults, so that `data split` splits like training does
    "validation_split": DataConfig.model_fields["validation_split"].default,
    "test_split": DataConfig.model_fields["test_split"].default,
    "seed": RunConfig.model_fields["seed"].default,
}
_SEVERITY_STYLE = {"error": "bold red", "warning": "yellow"}
_TOKENIZER_HELP = (f"Tokenizer: a model name as in model.name ({EMBEDDED_MODEL_ALIAS}, a Hub id, a .gguf file) or a "
                   "model or tokenizer folder")


# A wrong option value is a ConfigError naming the option; a missing input (no files, no tokenizer) is a LorakitError
# with a hint; both exit 2 with one message.


def _config(config_path: Path | None, overrides: list[str]) -> RunConfig | None:
    if config_path is None and not overrides:
        return None
    if config_path is None:
        raise LorakitError("--set needs --config: it overrides a value of that config file.")
    return load_config(config_path, overrides)


def _files(files: list[Path], config: RunConfig | None) -> list[str]:
    if files:
        return [str(path) for path in files]
    if config is not None:
        return config.data.train_files
    raise LorakitError("No data files given.", hint="Name the data files, or pass --config CONFIG to use its data.train_file.")


def _tokenizer(name: str | None, config: RunConfig | None):
    """The tokenizer to count with: --tokenizer NAME, else the config's model; None when neither is given."""
    if name is not None:
        from lorakit.model.named_tokenizer import load_named_tokenizer

        return load_named_tokenizer(name)
    if config is None:
        return None
    from lorakit.model.load import load_tokenizer, resolve_model_source

    return load_tokenizer(resolve_model_source(config.model), config.model)


def _format(value: str | None, config: RunConfig | None) -> str:
    if value is None:
        return config.data.format if config is not None else "auto"
    if value not in ("auto", *FORMATS):
        raise ConfigError("--format", [f"'{value}' is not one of auto, {', '.join(FORMATS)}"])
    return value


def _max_length(max_length: int | None, config: RunConfig | None) -> int:
    if max_length is not None:
        return max_length
    return (config.model if config is not None else ModelConfig()).max_length


def _print_issue(issue: Issue) -> None:
    line = Text(issue.location() + ": ", style="bold")
    line.append(issue.severity, style=_SEVERITY_STYLE[issue.severity])
    line.append(": " + (f"field '{issue.field}': " if issue.field else "") + issue.message)
    console.print(line, soft_wrap=True, highlight=False)
    if issue.hint:
        console.print(Text("    fix: " + issue.hint, style="dim"), soft_wrap=True, highlight=False)


def _print_report(report: DataReport, strict: bool) -> None:
    for issue in report.sorted_issues():
        _print_issue(issue)
    for summary in report.files:
        kind = summary.format or "unknown format"
        records = f"{summary.records} record" + ("" if summary.records == 1 else "s")
        console.print(Text(f"{summary.path}: {kind}, {records}, {summary.valid} valid "
                           f"({summary.role} split)"), soft_wrap=True, highlight=False)
    errors, warnings = len(report.errors), len(report.warnings)
    if not errors and not warnings:
        console.print(Text(f"ok: {report.examples} examples, no problems found", style="green"), highlight=False)
        return
    verdict = "failed" if report.exit_code(strict) else "ok"
    note = " (--strict: warnings fail)" if strict and warnings and not errors else ""
    console.print(Text(f"{verdict}: {report.examples} valid examples; {errors} error(s), {warnings} warning(s){note}",
                       style="bold red" if report.exit_code(strict) else "yellow"), soft_wrap=True, highlight=False)


def _split_roles(train: list[Path], validation: list[Path], test: list[Path]) -> dict[str, str]:
    """Path -> split for the leakage check; a file (by resolved path) given in two splits is a DataError."""
    roles: dict[str, str] = {}
    seen: dict[Path, tuple[Path, str]] = {}
    for role, paths in (("train", train), ("validation", validation), ("test", test)):
        for path in paths:
            first = seen.setdefault(path.resolve(), (path, role))
            if first[1] != role:
                also = "" if str(first[0]) == str(path) else f" (as {first[0]})"
                raise DataError(str(path), None, None, f"is given both as the {first[1]} split{also} and as the "
                                f"{role} split; a file belongs to one split, so nothing was checked",
                                hint="Name each file once: as a train file, after --validation, or after --test.")
            roles[str(path)] = role
    return roles


@data_app.command("check")
def check(
    files: list[Path] = typer.Argument(None, help="Data files (.jsonl, .json) or saved dataset folders."),
    config_path: Path | None = typer.Option(None, "--config", "-c", help="Run config: its data, model and max_length."),
    overrides: list[str] = typer.Option([], "--set", help="Override a config value, e.g. --set model.max_length=1024."),
    format: str | None = typer.Option(None, "--format", help=_FORMAT_HELP),
    tokenizer_name: str | None = typer.Option(None, "--tokenizer", help=f"{_TOKENIZER_HELP} for the length check "
                                              "(default: the config's model; no length check without either)."),
    max_length: int | None = typer.Option(None, "--max-length", min=1, help="Token limit (default: model.max_length)."),
    validation: list[Path] = typer.Option([], "--validation", help="A validation-split file (checked for leakage)."),
    test: list[Path] = typer.Option([], "--test", help="A test-split file (checked for leakage)."),
    strict: bool = typer.Option(False, "--strict", help="Warnings fail too (exit 2)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    scan_phi: bool = typer.Option(True, "--phi-scan/--no-phi-scan", help="Scan for patient identifiers."),
    allow_phi: bool = typer.Option(False, "--allow-phi", help="Privacy findings are warnings, not errors."),
    contamination: bool = typer.Option(True, "--contamination/--no-contamination",
                                       help="Report rows that contain a shipped benchmark item (warning) or a safety "
                                       "probe (error), by 13-word overlap."),
) -> None:
    """Report every problem in the data files, each with file:line, field and fix. Exit 0 clean, 2 on errors.
    Preference files (prompt/chosen/rejected) are recognised by their first record and checked as pairs."""
    from lorakit.data.preference_check import check_data_files
    from lorakit.evaluation.held_out_texts import held_out_index

    config = _config(config_path, overrides)
    roles = _split_roles(list(files or []) if validation or test else [], validation, test)
    paths = _files(list(files or []) + list(validation) + list(test), config)
    tokenizer = _tokenizer(tokenizer_name, config)
    report = check_data_files(
        paths,
        format=_format(format, config),
        tokenizer=tokenizer,
        max_length=_max_length(max_length, config) if tokenizer is not None else None,
        scan_phi=scan_phi,
        allow_phi=allow_phi or (config.data.allow_phi if config else False),
        system_prompt=config.data.system_prompt if config else DEFAULT_SYSTEM_PROMPT,
        roles=roles,
        contamination=held_out_index() if contamination else None,
    )
    if as_json:
        console.out(json.dumps(report.to_json(), indent=2, ensure_ascii=False), highlight=False)
    else:
        _print_report(report, strict)
        if tokenizer is None:
            console.print(Text("note: lengths were not checked; pass --tokenizer DIR or --config", style="dim"),
                          highlight=False)
    raise typer.Exit(report.exit_code(strict))


@data_app.command("redact")
def redact(
    source: Path = typer.Argument(..., metavar="IN", help="Data file (or saved dataset folder) to read."),
    target: Path | None = typer.Argument(None, metavar="OUT", help="Where to write the redacted copy: .jsonl (JSON "
                                         "Lines) or .json (one array), whatever IN's format. Default: IN's name "
                                         "with .redacted.jsonl (notes.csv -> notes.redacted.jsonl)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists (never IN)."),
) -> None:
    """Write a copy with e-mails, phones, SSNs, MRNs, birth dates, addresses, IPs and names replaced."""
    from lorakit.data.redact import redact_file, redacted_path

    target = redacted_path(source) if target is None else target
    summary = redact_file(source, target, overwrite=overwrite)
    kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(summary.by_kind.items())) or "nothing found"
    console.print(Text(f"{target}: {summary.records} records, {summary.changed_records} redacted ({kinds})"),
                  soft_wrap=True, highlight=False)
    if summary.unparsed_lines:
        console.print(Text(f"note: {len(summary.unparsed_lines)} line(s) are not valid JSON and were redacted as "
                           "plain text; run `lorakit data check` on the output", style="yellow"), highlight=False)


@data_app.command("stats")
def stats(
    files: list[Path] = typer.Argument(None, help="Data files (default: the config's data.train_file)."),
    config_path: Path | None = typer.Option(None, "--config", "-c", help="Run config: model (tokenizer), max_length."),
    overrides: list[str] = typer.Option([], "--set", help="Override a config value."),
    format: str | None = typer.Option(None, "--format", help=_FORMAT_HELP),
    tokenizer_name: str | None = typer.Option(None, "--tokenizer", help=f"{_TOKENIZER_HELP} (default: the config's model)."),
    max_length: int | None = typer.Option(None, "--max-length", min=1, help="Token limit (default: model.max_length)."),
    histogram: Path | None = typer.Option(None, "--histogram", help="PNG path (default: next to the first data file, "
                                          "as <its name>.lengths.png)."),
    no_histogram: bool = typer.Option(False, "--no-histogram", help="Do not write the PNG."),
    as_json: bool = typer.Option(False, "--json", help="Print the statistics as JSON."),
) -> None:
    """Token counts under the model's tokenizer and chat template: lengths, truncation, trained vs context."""
    from lorakit.data.stats import default_histogram_path, token_stats, write_histogram
    from lorakit.data.validate import DataChecker

    config = _config(config_path, overrides)
    paths = _files(list(files or []), config)
    tokenizer = _tokenizer(tokenizer_name, config)
    if tokenizer is None:
        raise LorakitError("Token statistics need a tokenizer.",
                           hint=f"Pass --tokenizer {EMBEDDED_MODEL_ALIAS} (or a Hub id, a model or tokenizer folder, a "
                           ".gguf file), or --config CONFIG to use its model.")
    checker = DataChecker(_format(format, config), scan_phi=False)
    system_prompt = config.data.system_prompt if config else DEFAULT_SYSTEM_PROMPT
    result = token_stats((c for p in paths for c in checker.read(p)), tokenizer, system_prompt,
                         _max_length(max_length, config))
    report = checker.finish()
    png = None if no_histogram or not result.examples else write_histogram(
        result, histogram or default_histogram_path(paths[0]), Path(paths[0]).name)
    if as_json:
        console.out(json.dumps({**result.to_json(), "histogram": str(png) if png else None,
                                "skipped_records_with_errors": len(report.errors)}, indent=2), highlight=False)
        return
    _print_stats(result, png, len(report.errors))


def _print_stats(result, png: Path | None, errors: int) -> None:
    table = Table(title="token statistics (system prompt and chat template included)", show_header=False)
    values = result.to_json()
    table.add_row("examples", str(result.examples))
    table.add_row("tokens", f"{result.tokens} (mean {values['mean_tokens']})")
    for name, value in values["percentiles"].items():
        table.add_row(f"length {name}", str(value))
    table.add_row("truncated", f"{result.truncated} ({result.truncated_share:.1%}) at max_length {result.max_length}")
    total = result.trained_tokens + result.context_tokens
    share = f" ({result.trained_tokens / total:.1%})" if total else ""
    table.add_row("trained tokens", f"{result.trained_tokens}{share}: assistant turns, after truncation")
    table.add_row("context tokens", f"{result.context_tokens}: system prompt, user turns, template")
    console.print(table)
    if png is not None:
        console.print(Text(f"histogram: {png}"), highlight=False, soft_wrap=True)
    if errors:
        console.print(Text(f"note: {errors} error(s) in the data; those records are not counted. "
                           "Run `lorakit data check`.", style="yellow"), highlight=False, soft_wrap=True)


@data_app.command("split")
def split(
    files: list[Path] = typer.Argument(..., help="Data files to split."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Folder for train.jsonl, validation.jsonl, test.jsonl."),
    validation_fraction: float = typer.Option(_DEFAULTS["validation_split"], "--validation", min=0.0, max=0.9,
                                              help="Share for validation."),
    test_fraction: float = typer.Option(_DEFAULTS["test_split"], "--test", min=0.0, max=0.9, help="Share for test."),
    seed: int = typer.Option(_DEFAULTS["seed"], "--seed", min=0, max=SEED_MAX,
                             help="Same seed and data, same split (as training's `seed`: 0 to 2**32 - 1)."),
    format: str | None = typer.Option(None, "--format", help=_FORMAT_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the three files if they exist (never an "
                                   "input file)."),
) -> None:
    """Write deterministic train/validation/test files (seeded content hash: duplicates stay on one side)."""
    from lorakit.data.split_files import write_split_files

    if validation_fraction + test_fraction >= 0.9:
        raise ConfigError("--validation/--test", ["their sum must be below 0.9 so that data is left to train on"])
    written = write_split_files(files, out_dir, validation_fraction, test_fraction, seed, _format(format, None),
                                overwrite=overwrite)
    for name, (path, count) in written.items():
        console.print(Text(f"{name}: {count} examples -> {path}"), highlight=False, soft_wrap=True)
