"""Check preference files in one pass and report every problem, as `lorakit data check` does for SFT data.

Per record: the format (data/preference.py: missing fields, wrong types, chosen == rejected), the privacy
scan on every text field (prompt, chosen, rejected), safety probes in any turn (an error: the eval would
grade answers it trained on), and, with a tokenizer, the chat template's mask check on both answers (the
same renderer and check training uses) and their length after truncation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from lorakit.config import DEFAULT_SYSTEM_PROMPT
from lorakit.data.contamination import ContaminationIndex
from lorakit.data.conversation import Conversation, Message
from lorakit.data.issues import DataReport, FileSummary, Issue
from lorakit.data.preference import PreferencePair, is_preference_record, parse_preference
from lorakit.data.preference_batch import render_preferences
from lorakit.data.raw_record import RawRecord
from lorakit.data.sources import open_sources
from lorakit.data.validate import check_files, phi_issues, refusal_error
from lorakit.errors import DataError

__all__ = ["PREFERENCE_FORMAT", "is_preference_file", "check_preference_files", "check_data_files",
           "load_checked_preferences"]

PREFERENCE_FORMAT = "preference"  # the format name data check reports for these files
_RENDER_BATCH = 256


def is_preference_file(path: str | Path) -> bool:
    """Whether the first record of `path` is a preference pair (a file that cannot be read is not)."""
    for source in open_sources(path, hashlib.sha256()):
        for item in source.read():
            if isinstance(item, RawRecord):
                return is_preference_record(item.value)
    return False


class _PreferenceChecker:
    def __init__(self, tokenizer, max_length: int | None, system_prompt: str, scan_phi: bool, allow_phi: bool,
                 contamination: ContaminationIndex | None):
        self.tokenizer, self.max_length, self.system_prompt = tokenizer, max_length, system_prompt
        self.scan_phi, self.allow_phi, self.contamination = scan_phi, allow_phi, contamination
        self.report = DataReport()
        self.digest = hashlib.sha256()

    def read(self, path: str | Path) -> Iterator[PreferencePair]:
        for source in open_sources(path, self.digest):
            summary = FileSummary(source.path, source.role, PREFERENCE_FORMAT)
            self.report.files.append(summary)
            pending: list[PreferencePair] = []
            for item in source.read():
                if isinstance(item, Issue):
                    self.report.issues.append(item)
                    continue
                summary.records += 1
                pair = self._record(item)
                if pair is not None:
                    pending.append(pair)
                if len(pending) >= _RENDER_BATCH:
                    yield from self._rendered(pending, summary)
                    pending = []
            yield from self._rendered(pending, summary)

    def _record(self, item: RawRecord) -> PreferencePair | None:
        parsed = parse_preference(item.value, item.path, item.line)
        issues = list(item.issues) + list(parsed.issues)
        if self.scan_phi:
            issues += phi_issues(item.path, item.line, parsed.texts, self.allow_phi)
        if self.contamination is not None and parsed.pair is not None:
            pair = parsed.pair
            every_turn = Conversation((*pair.prompt, Message("assistant", pair.chosen),
                                       Message("assistant", pair.rejected)), pair.source, pair.line)
            issues += self.contamination.issues(every_turn)
        self.report.issues.extend(issues)
        return None if any(issue.severity == "error" for issue in issues) else parsed.pair

    def _rendered(self, pairs: list[PreferencePair], summary: FileSummary) -> Iterator[PreferencePair]:
        """The pairs whose answers the template masks exactly and truncation leaves something of."""
        if self.tokenizer is None:
            summary.valid += len(pairs)
            yield from pairs
            return
        for pair in pairs if len(pairs) == 1 else self._maskable(pairs):
            example = render_preferences([pair], self.tokenizer, self.system_prompt, self.max_length)[0]
            for name, rendered in (("chosen", example.chosen), ("rejected", example.rejected)):
                if rendered.trained_tokens == 0:
                    self._issue(pair, "error", "no-answer-left", name, f"the prompt fills max_length "
                                f"{self.max_length}, so truncation leaves nothing of this answer to train on",
                                "Shorten the prompt, or raise model.max_length.")
                elif rendered.truncated:
                    self._issue(pair, "warning", "too-long", name, f"prompt + {name} is longer than max_length "
                                f"{self.max_length}; the answer will be truncated",
                                "Shorten it, or raise model.max_length.")
            if all(r.trained_tokens for r in (example.chosen, example.rejected)):
                summary.valid += 1
                yield pair

    def _maskable(self, pairs: list[PreferencePair]) -> list[PreferencePair]:
        """The pairs the template can mask, one error for each that it cannot (found one by one on failure)."""
        try:
            render_preferences(pairs, self.tokenizer, self.system_prompt, self.max_length)
            return pairs
        except DataError:
            pass
        kept = []
        for pair in pairs:
            try:
                render_preferences([pair], self.tokenizer, self.system_prompt, self.max_length)
                kept.append(pair)
            except DataError as exc:
                self._issue(pair, "error", "mask-mismatch", None, exc.message, exc.hint)
        return kept

    def _issue(self, pair: PreferencePair, severity, code: str, field: str | None, message: str, hint) -> None:
        self.report.issues.append(Issue(pair.source, pair.line, severity, code, message, field=field, hint=hint))


def check_preference_files(paths: Sequence[str | Path], tokenizer=None, max_length: int | None = None,
                           system_prompt: str = DEFAULT_SYSTEM_PROMPT, scan_phi: bool = True, allow_phi: bool = False,
                           contamination: ContaminationIndex | None = None) -> DataReport:
    """Every problem of the preference files (with a tokenizer: mask and length checks too)."""
    if (tokenizer is None) != (max_length is None):
        raise ValueError("pass both tokenizer and max_length to render the answers, or neither")
    checker = _PreferenceChecker(tokenizer, max_length, system_prompt, scan_phi, allow_phi, contamination)
    for path in paths:
        for _ in checker.read(path):
            pass
    checker.report.data_sha256 = checker.digest.hexdigest()
    return checker.report


def load_checked_preferences(paths: Sequence[str], tokenizer, max_length: int, system_prompt: str,
                             allow_phi: bool, action: str = "preference training did not start",
                             ) -> tuple[list[PreferencePair], DataReport]:
    """The pairs of the files when they are clean (what preference training reads); a DataError otherwise, saying
    that `action` happened (the command that read them: `lorakit plan` reads them too)."""
    checker = _PreferenceChecker(tokenizer, max_length, system_prompt, True, allow_phi, None)
    pairs = [pair for path in paths for pair in checker.read(path)]
    checker.report.data_sha256 = checker.digest.hexdigest()
    if checker.report.errors:
        raise refusal_error(list(paths), checker.report, action=action)
    return pairs, checker.report


def check_data_files(paths: Sequence[str | Path], format: str = "auto", tokenizer=None, max_length: int | None = None,
                     scan_phi: bool = True, allow_phi: bool = False, system_prompt: str = DEFAULT_SYSTEM_PROMPT,
                     roles: dict[str, str] | None = None,
                     contamination: ContaminationIndex | None = None) -> DataReport:
    """`lorakit data check`: preference files (their first record has chosen and rejected) checked as pairs,
    every other file as SFT data (`check_files`), in one report."""
    preference = [path for path in paths if format == "auto" and is_preference_file(path)]
    sft = [path for path in paths if path not in preference]
    if not preference:
        return check_files(sft, format, tokenizer, max_length, scan_phi, allow_phi, system_prompt, roles, contamination)
    report = check_preference_files(preference, tokenizer, max_length, system_prompt, scan_phi, allow_phi,
                                    contamination)
    if sft:
        other = check_files(sft, format, tokenizer, max_length, scan_phi, allow_phi, system_prompt, roles,
                            contamination)
        digests = f"{other.data_sha256}{report.data_sha256}".encode()
        report = DataReport(files=other.files + report.files, issues=other.issues + report.issues,
                            data_sha256=hashlib.sha256(digests).hexdigest())
    return report
