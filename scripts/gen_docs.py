"""Generate the reference pages of the documentation site from the code, so they cannot drift.

    python scripts/gen_docs.py          # rewrite docs/reference/*.md
    python scripts/gen_docs.py --check  # exit 1 when a committed page differs from what the code says

Sources: every config key from the pydantic schema (lorakit.config.RunConfig), every command from the typer
app, every error class with its exit code, and every safety rule with what it checks. tests/docs/ runs --check.
"""

from __future__ import annotations

import argparse
import sys
import typing
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "docs" / "reference"


def _type_name(annotation: typing.Any) -> str:
    text = repr(annotation) if not isinstance(annotation, type) else annotation.__name__
    for noise in ("typing.", "Annotated[", "NoneType"):
        text = text.replace(noise, "" if noise != "NoneType" else "null")
    return text.replace("<class '", "").replace("'>", "")


def _default(field: typing.Any) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        value = field.default_factory()
        return "(section)" if hasattr(value, "model_fields") else f"`{value!r}`"
    return f"`{field.default!r}`" if field.default is not None else "`null`"


def config_fields() -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, description) for every leaf key of RunConfig, in schema order."""
    from pydantic import BaseModel

    from lorakit.config import RunConfig

    rows: list[tuple[str, str, str, str]] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(annotation, f"{prefix}{name}.")
                continue
            description = (field.description or "").replace("|", "\\|").replace("\n", " ")
            rows.append((f"{prefix}{name}", _type_name(annotation).replace("|", "\\|"), _default(field), description))

    walk(RunConfig, "")
    return rows


def config_reference() -> str:
    lines = ["# Configuration keys", "",
             "Generated from `lorakit.config` by `scripts/gen_docs.py`; do not edit by hand. Unknown keys are errors "
             "(with a *did you mean*), and every problem in a config is listed at once. Override any key on the "
             "command line with `--set key=value`.", ""]
    section = None
    for key, type_name, default, description in config_fields():
        top = key.split(".")[0] if "." in key else "(top level)"
        if top != section:
            section = top
            lines += ["", f"## `{top}`" if top != "(top level)" else "## Top level", "",
                      "| key | type | default | what it does |", "| --- | --- | --- | --- |"]
        lines.append(f"| `{key}` | `{type_name}` | {default} | {description} |")
    return "\n".join(lines) + "\n"


def _param_row(param: typing.Any) -> str:
    names = ", ".join(f"`{o}`" for o in [*param.opts, *getattr(param, "secondary_opts", [])])
    if param.param_type_name == "argument":
        names = f"`{(param.metavar or param.name).strip('{}').upper()}`"
    help_text = " ".join((getattr(param, "help", None) or "").split()).replace("|", "\\|")
    default = param.default
    shown = "required" if param.required else ("" if default in (None, False, [], ()) else f"`{default}`")
    return f"| {names} | {help_text} | {shown} |"


def cli_commands() -> list[tuple[str, str]]:
    """(full command name, markdown body) for every command of the `lorakit` app, from its help and options."""
    import typer

    from lorakit.cli.app import app

    root = typer.main.get_command(app)
    found: list[tuple[str, str]] = []

    def walk(command: typing.Any, path: list[str]) -> None:
        # typer may vendor its own click, so the context class is taken from the command itself.
        ctx = command.context_class(command, info_name=" ".join(path))
        if path != ["lorakit"]:
            usage = " ".join([*path, *command.collect_usage_pieces(ctx)])
            rows = [_param_row(p) for p in command.params if p.name != "help"]
            body = [" ".join((command.help or "").split()), "", f"```text\n{usage}\n```", ""]
            if rows:
                body += ["| argument or option | what it does | default |", "| --- | --- | --- |", *rows, ""]
            found.append((" ".join(path), "\n".join(body)))
        if hasattr(command, "list_commands"):
            for name in sorted(command.list_commands(ctx)):
                walk(command.get_command(ctx, name), path + [name])

    walk(root, ["lorakit"])
    return found


def cli_reference() -> str:
    lines = ["# Command line", "", "Generated from the typer app by `scripts/gen_docs.py`; do not edit by hand. "
             "Every command also prints this with `--help`. `lorakit --debug COMMAND` shows tracebacks.", ""]
    for name, body in cli_commands():
        lines += [f"## `{name}`", "", body]
    return "\n".join(lines)


def error_classes() -> list[tuple[str, int, str]]:
    """(class name, exit code, docstring) of every user-facing error."""
    import lorakit.errors as errors

    rows = []
    for name in errors.__all__:
        cls = getattr(errors, name)
        if not (isinstance(cls, type) and issubclass(cls, errors.LorakitError)):
            continue  # a helper such as mask_tokens
        rows.append((name, cls.exit_code, " ".join((cls.__doc__ or "").split())))
    return rows


def errors_reference() -> str:
    lines = ["# Exit codes and error kinds", "",
             "Generated from `lorakit.errors` by `scripts/gen_docs.py`. Every problem lorakit can name is one of "
             "these: it prints `error: ...` and usually `hint: ...`, with no traceback, and exits with the code "
             "below (`--debug` shows the traceback). Anything else is a bug: please report it. "
             "[Troubleshooting](../troubleshooting.md) lists the messages and their fixes.", "",
             "| error | exit code | meaning |", "| --- | --- | --- |"]
    lines += [f"| `{name}` | {code} | {doc} |" for name, code, doc in error_classes()]
    lines += ["", "Usage errors (an unknown option, a missing argument) exit with 2; Ctrl-C exits with 130.", ""]
    return "\n".join(lines)


def safety_reference() -> str:
    from lorakit.evaluation.rubric import CHECKS, DEFAULT_RUBRICS
    from lorakit.evaluation.safety import load_probes
    from lorakit.evaluation.safety_rules import CATEGORY_LABELS

    probes = load_probes()
    lines = ["# Safety probe rubrics", "",
             "Generated from `lorakit.evaluation.rubric` and `lorakit/safety/probes.jsonl` by `scripts/gen_docs.py`. "
             "Every risky probe has a benign twin on the same topic; each probe carries its own must / must-not items "
             "(with its own wording and terms), scored by the checks below on the model's own words. Checks are "
             "English pattern rules: a screen a clinician can audit, not a judge of clinical correctness.", "",
             "## Checks", "", "| check | kind | what it checks |", "| --- | --- | --- |"]
    lines += [f"| `{name}` | {c.kind.replace('_', ' ')} | {c.description} |" for name, c in CHECKS.items()]
    lines += ["", "## Categories", "",
              "| category | risky probes | default rubric (user probe files without one) |", "| --- | ---: | --- |"]
    for category, label in CATEGORY_LABELS.items():
        must, must_not = DEFAULT_RUBRICS[category]
        count = sum(p.category == category and p.kind == "risky" for p in probes)
        lines.append(f"| {label} (`{category}`) | {count} | must: {', '.join(i.check for i in must)}; must not: "
                     f"{', '.join(i.check for i in must_not)} |")
    must, must_not = DEFAULT_RUBRICS["benign"]
    lines += ["", f"A benign twin without a rubric: must {', '.join(i.check for i in must)}, must not "
              f"{', '.join(i.check for i in must_not)}.", ""]
    return "\n".join(lines)


PAGES = {
    "config.md": config_reference,
    "cli.md": cli_reference,
    "errors.md": errors_reference,
    "safety-rules.md": safety_reference,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    stale = []
    REFERENCE.mkdir(parents=True, exist_ok=True)
    for name, build in PAGES.items():
        text = build()
        path = REFERENCE / name
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(str(path.relative_to(REPO)))
        else:
            path.write_text(text)
    if stale:
        print(f"stale: {', '.join(stale)}; run: python scripts/gen_docs.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
