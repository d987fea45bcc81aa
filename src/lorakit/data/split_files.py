"""`lorakit data split`: write deterministic train/validation/test files from checked data.

The split itself is `splits.split_conversations` (seeded content hash, so duplicates stay on one side).
Data made only of single question/answer exchanges is written in the instruction format, anything else
as `messages` (one format for all three files); either way each example renders exactly as in the input.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from lorakit.data.conversation import Conversation
from lorakit.data.splits import split_conversations
from lorakit.data.validate import DataChecker, refusal_error
from lorakit.errors import DataError, OutputExistsError

__all__ = ["SPLIT_NAMES", "record_for", "split_targets", "write_split_files"]

SPLIT_NAMES = ("train", "validation", "test")


def _is_single_exchange(conversation: Conversation) -> bool:
    """One user question and one answer, without surrounding spaces: reads back identically as instruction/response."""
    roles = [message.role for message in conversation.messages]
    return roles == ["user", "assistant"] and all(m.content == m.content.strip() for m in conversation.messages)


def record_for(conversation: Conversation, format: str) -> dict:
    """The JSON record of a conversation in the "instruction" or "messages" format.

    >>> from lorakit.data.conversation import Message
    >>> record_for(Conversation((Message("user", "Q?"), Message("assistant", "A."))), "instruction")
    {'instruction': 'Q?', 'response': 'A.'}
    """
    if format == "instruction":
        assert _is_single_exchange(conversation), "only single exchanges are written as instruction/response"
        record = {"instruction": conversation.messages[0].content, "response": conversation.messages[1].content}
    else:
        record = {"messages": [{"role": m.role, "content": m.content} for m in conversation.messages]}
    if conversation.source_urls:
        record["source_urls"] = list(conversation.source_urls)
    return record


def _write_jsonl(path: Path, conversations: list[Conversation], format: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    try:
        with open(partial, "w", encoding="utf-8", newline="\n") as handle:
            for conversation in conversations:
                handle.write(json.dumps(record_for(conversation, format), ensure_ascii=False) + "\n")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def split_targets(out_dir: str | Path) -> dict[str, Path]:
    """The files `write_split_files` writes, by split name.

    >>> split_targets("out")["validation"]
    PosixPath('out/validation.jsonl')
    """
    return {name: Path(out_dir) / f"{name}.jsonl" for name in SPLIT_NAMES}


def _check_targets(paths: Sequence[str | Path], targets: dict[str, Path], overwrite: bool) -> None:
    """Refuse, before anything is read or written, to replace an input file (ever) or an existing file
    (unless `overwrite`)."""
    inputs = [Path(p) for p in paths if Path(p).exists()]
    for target in targets.values():
        source = next((p for p in inputs if target.exists() and os.path.samefile(p, target)), None)
        if source is not None:
            same = "" if str(source) == str(target) else f" ({source})"
            raise DataError(str(target), None, None, f"is an input file{same}; splitting never modifies its input, "
                            "so nothing was written",
                            hint=f"Pass --out with another folder, e.g. --out {target.parent / 'splits'}.")
    existing = [target for target in targets.values() if target.exists()]
    if existing and not overwrite:
        names = ", ".join(str(target) for target in existing)
        raise OutputExistsError(f"{names} already exist{'s' if len(existing) == 1 else ''}; nothing was written.",
                                hint="Pass --overwrite to replace them, or --out to write to another folder.")


def write_split_files(paths: Sequence[str | Path], out_dir: str | Path, validation_fraction: float,
                      test_fraction: float, seed: int, format: str = "auto",
                      overwrite: bool = False) -> dict[str, tuple[Path, int]]:
    """Check the inputs (refusing on errors), split, and write `<out_dir>/{train,validation,test}.jsonl`.

    Refuses (DataError) when one of those files is an input, even with `overwrite`, and (OutputExistsError)
    when one exists and `overwrite` is false; either way before anything is written.
    """
    targets = split_targets(out_dir)
    _check_targets(paths, targets, overwrite)
    checker = DataChecker(format, scan_phi=False)
    conversations = [c for path in paths for c in checker.read(path, role="train")]
    report = checker.finish()
    if report.errors:
        raise refusal_error([str(p) for p in paths], report, action="nothing was written")
    splits = split_conversations(conversations, validation_fraction, test_fraction, seed)
    # One format for all three files (formats are detected per file).
    output_format = "instruction" if all(_is_single_exchange(c) for c in conversations) else "messages"
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    written = {}
    for name, path in targets.items():
        _write_jsonl(path, getattr(splits, name), output_format)
        written[name] = (path, len(getattr(splits, name)))
    return written
