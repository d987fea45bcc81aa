"""The files of a finished adapter (final/) and their sha256s: recorded when training writes them, verified by
every command that loads them (chat, eval, serve, export, push).

final/ is what people copy, download and share, so it is the folder most likely to be swapped or tampered with.
Without a record, a pickled adapter_model.bin put in place of the safetensors surfaced as torch's raw traceback
(advising weights_only=False), and `export --format adapter` copied it on silently. The record covers what
`export --format adapter` copies verbatim (weights, adapter_config.json, tokenizer files); README.md,
config.yaml and manifest.json are rewritten by exports (public copies) and are not in it (the manifest holds it).
"""

from __future__ import annotations

from pathlib import Path

from lorakit.run.checkpoints import sha256_file

__all__ = ["ADAPTER_FILES_KEY", "UNRECORDED", "adapter_file_digests", "adapter_files_problem"]

ADAPTER_FILES_KEY = "adapter_files_sha256"  # the manifest key
UNRECORDED = frozenset({"README.md", "config.yaml", "manifest.json"})
# Formats that unpickle when loaded (peft falls back to adapter_model.bin when the safetensors file is missing).
_PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_WEIGHTS = "adapter_model.safetensors"


def adapter_file_digests(folder: Path) -> dict[str, str]:
    """sha256 of each file of an adapter folder that the record covers, by name."""
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name not in UNRECORDED}


def adapter_files_problem(folder: Path, recorded: dict[str, str] | None) -> str | None:
    """None when the folder holds exactly the recorded files with their sha256s, else what is wrong (naming the
    file). A manifest of an older lorakit records none: then only missing weights and pickled files are refused."""
    present = {p.name for p in folder.iterdir() if p.is_file() and p.name not in UNRECORDED}
    pickled = sorted(name for name in present - set(recorded or {}) if name.endswith(_PICKLED_SUFFIXES))
    if pickled:
        return (f"{folder / pickled[0]} is a pickled file that lorakit never writes (loading it can run code), "
                "and the manifest does not record it")
    if recorded is None:
        return None if _WEIGHTS in present else f"{folder / _WEIGHTS} is missing"
    for name, digest in recorded.items():
        if name not in present:
            return f"{folder / name} is missing"
        if sha256_file(folder / name) != digest:
            return f"{folder / name} does not match the sha256 its manifest records (changed since training wrote it)"
    extra = sorted(name for name in present - set(recorded) if name.endswith(".safetensors"))
    return f"{folder / extra[0]} is not one of the files training wrote" if extra else None
