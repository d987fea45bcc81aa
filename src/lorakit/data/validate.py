"""Check data files in one streaming pass and report every problem; the gate in front of training.

`check_files` is `lorakit data check`; `load_checked_conversations` is what training calls: it returns
the conversations only when the data is clean (or, with `skip_invalid`, the valid ones and exactly which
lines were skipped), and raises a DataError listing the problems otherwise.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from jinja2.exceptions import TemplateError

from lorakit.config import DEFAULT_SYSTEM_PROMPT, DataConfig
from lorakit.data.contamination import ContaminationIndex
from lorakit.data.conversation import Conversation
from lorakit.data.duplicates import DuplicateIndex
from lorakit.data.formats import FileFormat
from lorakit.data.issues import DataReport, FileSummary, Issue, line_ranges
from lorakit.data.phi_scan import masked_snippet, scan_text
from lorakit.data.render import count_tokens, prompt_token_counts
from lorakit.data.sources import open_sources
from lorakit.data.unicode_text import find_lone_surrogate
from lorakit.errors import DataError
from lorakit.runtime.logging import get_logger

__all__ = ["DataChecker", "check_files", "load_checked_conversations", "refusal_error", "phi_issues"]

log = get_logger("data.validate")

_LENGTH_BATCH = 512  # conversations per chat-template + tokenizer call
_LISTED_PROBLEMS = 20
_PHI_HINT = ("Remove or redact it (`lorakit data redact IN OUT` writes a redacted copy), or pass --allow-phi "
             "if this data may be used for training.")


class DataChecker:
    """Reads files record by record, collecting issues; `read` yields the conversations without errors."""

    def __init__(self, format: str = "auto", tokenizer=None, max_length: int | None = None,
                 system_prompt: str = DEFAULT_SYSTEM_PROMPT, scan_phi: bool = True, allow_phi: bool = False,
                 contamination: ContaminationIndex | None = None):
        if (tokenizer is None) != (max_length is None):
            raise ValueError("pass both tokenizer and max_length to check lengths, or neither")
        self.format = format
        self.tokenizer, self.max_length, self.system_prompt = tokenizer, max_length, system_prompt
        self.scan_phi, self.allow_phi = scan_phi, allow_phi
        self.contamination = contamination  # benchmark items and safety probes a row must not contain
        self.report = DataReport()
        self._digest = hashlib.sha256()
        self._duplicates = DuplicateIndex()
        self._pending_lengths: list[Conversation] = []
        self._late_errors: set[tuple[str, int]] = set()

    def read(self, path: str | Path, role: str | None = None) -> Iterator[Conversation]:
        """Conversations of `path` (one per valid record), in order; problems go to `self.report`."""
        for source in open_sources(path, self._digest):
            summary = FileSummary(source.path, role or source.role)
            self.report.files.append(summary)
            yield from self._read_source(source, summary)

    def _read_source(self, source, summary: FileSummary) -> Iterator[Conversation]:
        file_index = self._duplicates.add_file(source.path, summary.role)
        file_format = FileFormat(source.path, self.format)
        explained = False  # an error already says why no record was read (unreadable file, invalid lines)
        for item in source.read():
            if isinstance(item, Issue):
                self.report.issues.append(item)
                explained |= item.severity == "error"
                continue
            summary.records += 1
            surrogate = find_lone_surrogate(item.value)
            if surrogate is not None:  # before any field is read: the tokenizer and the console would fail on it
                self.report.issues.extend(item.issues)
                self.report.issues.append(_surrogate_issue(source.path, item.line, *surrogate))
                continue
            parsed = file_format.parse(item.value, item.line)
            issues = list(item.issues) + list(parsed.issues)
            if self.scan_phi:
                issues += self._phi_issues(source.path, item.line, parsed.texts)
            if self.contamination is not None and parsed.conversation is not None:
                issues += self.contamination.issues(parsed.conversation)
            self.report.issues.extend(issues)
            if parsed.conversation is None:
                continue
            self._duplicates.add(file_index, item.line, parsed.conversation)
            if any(issue.severity == "error" for issue in issues):
                continue
            summary.valid += 1
            if self.tokenizer is not None:
                self._queue_length_check(parsed.conversation)
            yield parsed.conversation
        summary.format = file_format.name
        if summary.records == 0 and not explained:
            self.report.issues.append(Issue(source.path, None, "error", "no-records", "contains no records",
                                            hint="Add examples, one JSON object per line."))

    def _phi_issues(self, path: str, line: int, texts: tuple[tuple[str, str], ...]) -> list[Issue]:
        return phi_issues(path, line, texts, self.allow_phi)

    def _queue_length_check(self, conversation: Conversation) -> None:
        self._pending_lengths.append(conversation)
        if len(self._pending_lengths) >= _LENGTH_BATCH:
            self._check_lengths()

    def _token_counts(self, batch: list[Conversation]) -> list[int | None]:
        """Token counts; None (and an error) for a conversation the model's chat template refuses."""
        try:
            return count_tokens(batch, self.tokenizer, self.system_prompt)
        except TemplateError as exc:
            if len(batch) > 1:  # find the culprit(s) one by one
                return [count for c in batch for count in self._token_counts([c])]
            conversation = batch[0]
            self._late_errors.add((conversation.source, conversation.line))
            self.report.issues.append(Issue(
                conversation.source, conversation.line, "error", "template-error",
                f"the model's chat template refuses this conversation: {exc}",
                hint="Reorder or merge the turns as the message says (many templates need user and assistant "
                     "turns to alternate)."))
            return [None]

    def _check_lengths(self) -> None:
        batch, self._pending_lengths = self._pending_lengths, []
        counts = self._token_counts(batch)
        too_long = [(c, n) for c, n in zip(batch, counts) if n is not None and n > self.max_length]
        if not too_long:
            return
        prompts = prompt_token_counts([c for c, _ in too_long], self.tokenizer, self.system_prompt)
        for (conversation, count), prompt in zip(too_long, prompts):
            where = f"{count} tokens (system prompt and chat template included), more than max_length {self.max_length}"
            if prompt >= self.max_length:
                self._late_errors.add((conversation.source, conversation.line))
                self.report.issues.append(Issue(
                    conversation.source, conversation.line, "error", "no-answer-left",
                    f"{where}; the answer starts after token {prompt}, so truncation leaves nothing to train on",
                    hint="Shorten the question, or raise model.max_length."))
            else:
                self.report.issues.append(Issue(
                    conversation.source, conversation.line, "warning", "too-long", f"{where}; it will be truncated",
                    hint="Shorten it or split it into several examples, or raise model.max_length."))

    def finish(self) -> DataReport:
        """Flush pending length checks, compare duplicates, and return the report."""
        if self._pending_lengths:
            self._check_lengths()
        early = {(i.path, line) for i in self.report.issues if i.severity == "error" for line in i.lines()}
        for issue in self._duplicates.issues():
            self.report.issues.append(issue)
            if issue.severity == "error" and (issue.path, issue.line) not in early:
                self._late_errors.add((issue.path, issue.line))
        by_path = {summary.path: summary for summary in self.report.files}
        for path, _ in self._late_errors:
            by_path[path].valid -= 1
        self.report.data_sha256 = self._digest.hexdigest()
        return self.report


def phi_issues(path: str, line: int, texts: tuple[tuple[str, str], ...], allow_phi: bool) -> list[Issue]:
    """The privacy scan's findings in each (field, text) of one record: errors, or warnings with `allow_phi`."""
    severity = "warning" if allow_phi else "error"
    issues = []
    for field, text in texts:
        findings = scan_text(text)
        for finding in findings:
            snippet = masked_snippet(text, findings, finding)
            issues.append(Issue(path, line, severity, f"phi-{finding.kind}",
                                f"possible {finding.label}: \"{snippet}\"", field=field, hint=_PHI_HINT))
    return issues


def _surrogate_issue(path: str, line: int, field: str, problem: str) -> Issue:
    return Issue(path, line, "error", "lone-surrogate", problem, field=field,
                 hint="A \\uXXXX escape between \\ud800 and \\udfff must be one of a pair (e.g. \\ud83d\\ude00); fix "
                      "or delete it, or write the character itself.")


def check_files(paths: Sequence[str | Path], format: str = "auto", tokenizer=None, max_length: int | None = None,
                scan_phi: bool = True, allow_phi: bool = False, system_prompt: str = DEFAULT_SYSTEM_PROMPT,
                roles: dict[str, str] | None = None, contamination: ContaminationIndex | None = None) -> DataReport:
    """Every problem in the files, without holding them in memory. `roles` maps a path to its split
    ("train", "validation", "test"); by default the file name decides (e.g. `val.jsonl`). With `contamination`,
    rows that contain its benchmark items or safety probes are reported too (data/contamination.py)."""
    checker = DataChecker(format, tokenizer, max_length, system_prompt, scan_phi, allow_phi, contamination)
    for path in paths:
        for _ in checker.read(path, (roles or {}).get(str(path))):
            pass
    return checker.finish()


def load_checked_conversations(data: DataConfig, tokenizer, max_length: int, action: str = "training did not start",
                               ) -> tuple[list[Conversation], DataReport]:
    """The configured train files as conversations, checked like `lorakit data check` (privacy scan on).

    Raises DataError on errors, and on privacy findings unless `data.allow_phi`, saying that `action` happened
    (the command that read them). With `data.skip_invalid` the records with errors are left out and
    `report.skipped` lists their (file, line)s.
    """
    checker = DataChecker(data.format, tokenizer, max_length, data.system_prompt, scan_phi=True,
                          allow_phi=data.allow_phi)
    conversations = [c for path in data.train_files for c in checker.read(path, role="train")]
    report = checker.finish()
    errors = report.errors
    if not errors:
        return conversations, report
    if not data.skip_invalid or any(issue.line is None for issue in errors):
        raise refusal_error(data.train_files, report, action=action, skip_invalid_given=data.skip_invalid)
    bad = {(issue.path, line) for issue in errors for line in issue.lines()}
    kept = [c for c in conversations if (c.source, c.line) not in bad]
    report.skipped = sorted(bad, key=lambda item: (data.train_files.index(item[0])
                                                   if item[0] in data.train_files else 0, item[1]))
    for path in dict.fromkeys(path for path, _ in report.skipped):
        lines = [line for p, line in report.skipped if p == path]
        log.warning("--skip-invalid: skipped %d line(s) of %s: %s", len(lines), path, line_ranges(lines))
    if not kept:
        raise DataError(", ".join(data.train_files), None, None, "no valid examples are left after skipping "
                        "the invalid lines", hint="Run `lorakit data check` on the files and fix them.")
    return kept, report


def refusal_error(paths: Sequence[str], report: DataReport, action: str = "training did not start",
                  skip_invalid_given: bool = False) -> DataError:
    """The DataError that lists the first problems of a report (with file:line) and says how to proceed.

    `--skip-invalid` is suggested only where it would help: when training, not already given, and every
    problem is on a line (it skips lines, not a missing or unreadable file)."""
    errors = report.errors
    listed = "\n".join(f"  {issue.headline()}" for issue in errors[:_LISTED_PROBLEMS])
    more = f"\n  ... and {len(errors) - _LISTED_PROBLEMS} more" if len(errors) > _LISTED_PROBLEMS else ""
    noun = "problem" if len(errors) == 1 else "problems"
    hint = "Run `lorakit data check` on the files to see every problem with its fix."
    whole_file = any(issue.line is None for issue in errors)
    if action == "training did not start" and not skip_invalid_given and not whole_file:
        hint += " Fix them, or pass --skip-invalid to train on the valid lines only."
    if action == "training did not start" and skip_invalid_given and whole_file:
        hint += " --skip-invalid skips invalid lines, not a file that is missing or cannot be read as a whole."
    if any(issue.code.startswith("phi-") for issue in errors):
        hint += (" The privacy scan found possible patient identifiers: redact them (`lorakit data redact IN OUT`),"
                 " or pass --allow-phi if this data may be used.")
    return DataError(", ".join(paths), None, None,
                     f"{len(errors)} {noun} in the data; {action}:\n{listed}{more}", hint=hint)
