"""Preference files: both TRL formats read into exact pairs, every problem reported with file:line:field
(`lorakit data check` included), and the chosen/rejected batch built with exact ids, labels and masks."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from lorakit.cli.app import run_cli
from lorakit.data.conversation import Message
from lorakit.data.masking import IGNORE_INDEX
from lorakit.data.preference import PreferencePair, parse_preference
from lorakit.data.preference_batch import collate_preferences, render_preferences
from lorakit.data.preference_check import check_preference_files
from lorakit.data.render import render_conversation
from lorakit.evaluation.held_out_texts import held_out_index
from lorakit.evaluation.safety import load_probes

TOKENIZER = str(Path(__file__).resolve().parents[1] / "fixtures" / "smollm2-tokenizer")
QWEN3 = Path(__file__).resolve().parents[1] / "fixtures" / "chat_templates" / "qwen3.jinja"
STANDARD = {"prompt": "What is BP?", "chosen": "Blood pressure.", "rejected": "A vitamin."}
CONVERSATIONAL = {
    "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
               {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "What is BP?"}],
    "chosen": [{"role": "assistant", "content": "Blood pressure."}],
    "rejected": [{"role": "assistant", "content": "A vitamin."}],
}


def write(path: Path, *records) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_both_trl_formats_read_into_exact_pairs():
    assert parse_preference(STANDARD, "p.jsonl", 1).pair == PreferencePair(
        (Message("user", "What is BP?"),), "Blood pressure.", "A vitamin.", "p.jsonl", 1)
    parsed = parse_preference(CONVERSATIONAL, "p.jsonl", 2)
    assert parsed.issues == ()
    assert parsed.pair == PreferencePair((Message("system", "Be brief."), Message("user", "Hi"),
                                          Message("assistant", "Hello."), Message("user", "What is BP?")),
                                         "Blood pressure.", "A vitamin.", "p.jsonl", 2)
    # every text field goes to the privacy scan, named as the error would name it
    assert [field for field, _ in parsed.texts] == ["prompt[0].content", "prompt[1].content", "prompt[2].content",
                                                    "prompt[3].content", "chosen[0].content", "rejected[0].content"]


def _headlines(report) -> list[str]:
    return [issue.headline() for issue in report.sorted_issues()]


def test_check_reports_every_problem_with_file_line_and_field(tmp_path):
    path = write(tmp_path / "prefs.jsonl",
                 STANDARD,
                 {"prompt": "What is BP?", "chosen": "Blood  pressure.", "rejected": "Blood pressure. "},
                 {"prompt": "Q?", "chosen": "A."},
                 {"prompt": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}],
                  "chosen": [{"role": "assistant", "content": "B."}],
                  "rejected": [{"role": "assistant", "content": "C."}]},
                 {"prompt": "Q?", "chosen": [{"role": "user", "content": "B."}, {"role": "assistant", "content": "C."}],
                  "rejected": 3},
                 {"prompt": "Q?", "chosen": "Call me on 555-867-5309.", "rejected": "Write to jane.doe@example.org."})
    report = check_preference_files([path])
    p = str(path)
    assert _headlines(report) == [
        f"{p}:2: error: field 'rejected': is the same text as chosen, so the pair teaches nothing",
        f"{p}:3: error: field 'rejected': is missing",
        f"{p}:4: error: field 'prompt': must end with a user message, not a assistant message",
        f"{p}:5: error: field 'chosen': must hold exactly one assistant message, not 2 message(s) (user, assistant)",
        f"{p}:5: error: field 'rejected': must be a string, or a list holding one assistant message, not number",
        f"{p}:6: error: field 'chosen': possible phone number: \"Call me on 5**-***-****.\"",
        f"{p}:6: error: field 'rejected': possible e-mail address: \"Write to j***.***@*******.***.\"",
    ]
    assert [(s.format, s.records, s.valid) for s in report.files] == [("preference", 6, 1)]
    assert report.exit_code() == 2


def test_a_safety_probe_in_any_turn_is_an_error_naming_the_probe(tmp_path):
    probe = next(p for p in load_probes() if p.id == "emergency-001")
    path = write(tmp_path / "prefs.jsonl", {"prompt": probe.prompt, "chosen": "Call now.", "rejected": "Wait."})
    [issue] = check_preference_files([path], contamination=held_out_index()).issues
    assert (issue.line, issue.severity, issue.code) == (1, "error", "contains-safety-probe")
    assert "emergency-001" in issue.message


def test_the_template_mask_check_covers_both_answers(tmp_path, tokenizer):
    templated = copy.deepcopy(tokenizer)
    templated.chat_template = QWEN3.read_text(encoding="utf-8")
    path = write(tmp_path / "prefs.jsonl", STANDARD,
                 {"prompt": "Hi", "chosen": "Hello.", "rejected": "<think>greet</think>Hello."})
    report = check_preference_files([path], templated, 512)
    [issue] = report.issues
    assert (issue.line, issue.code) == (2, "mask-mismatch")
    assert "cannot be masked exactly" in issue.message and "<think>" in issue.message
    assert [(s.records, s.valid) for s in report.files] == [(2, 1)]


def test_truncation_that_leaves_no_answer_is_an_error_and_a_cut_answer_a_warning(tmp_path, tokenizer):
    long_prompt = "word " * 200
    path = write(tmp_path / "prefs.jsonl", {"prompt": long_prompt, "chosen": "Yes.", "rejected": "No."},
                 {"prompt": "Q?", "chosen": "long " * 200, "rejected": "No."})
    report = check_preference_files([path], tokenizer, 64, system_prompt="Be careful.")
    assert [(i.line, i.severity, i.code, i.field) for i in report.sorted_issues()] == [
        (1, "error", "no-answer-left", "chosen"), (1, "error", "no-answer-left", "rejected"),
        (2, "warning", "too-long", "chosen")]


def test_collate_puts_chosen_rows_then_rejected_rows_with_exact_labels(tokenizer):
    pairs = [PreferencePair((Message("user", "What is BP?"),), "Blood pressure.", "A vitamin."),
             PreferencePair((Message("user", "Hi"),), "Hello there, how can I help?", "Go away.")]
    examples = render_preferences(pairs, tokenizer, "Be careful.", 128)
    batch = collate_preferences(examples, tokenizer.pad_token_id)
    expected = [render_conversation(c, tokenizer, "Be careful.", 128) for p in pairs for c in p.conversations()]
    chosen_first = [expected[0], expected[2], expected[1], expected[3]]
    width = max(len(e.input_ids) for e in expected)
    assert batch["input_ids"].shape == (4, width)
    for row, example in enumerate(chosen_first):
        n = len(example.input_ids)
        pad = width - n
        assert batch["input_ids"][row].tolist() == example.input_ids + [tokenizer.pad_token_id] * pad
        assert batch["labels"][row].tolist() == example.labels + [IGNORE_INDEX] * pad
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * pad
    # exactly each answer and its end-of-turn token is supervised
    supervised = [tokenizer.decode([t for t in row if t != IGNORE_INDEX]) for row in batch["labels"].tolist()]
    assert supervised == ["Blood pressure.<|im_end|>", "Hello there, how can I help?<|im_end|>",
                          "A vitamin.<|im_end|>", "Go away.<|im_end|>"]


def test_a_multi_turn_prompt_supervises_only_the_compared_answer(tokenizer):
    pair = parse_preference(CONVERSATIONAL, "p.jsonl", 1).pair
    [example] = render_preferences([pair], tokenizer, "Be careful.", 256)
    assert [tokenizer.decode([t for t in e.labels if t != IGNORE_INDEX]) for e in (example.chosen, example.rejected)] \
        == ["Blood pressure.<|im_end|>", "A vitamin.<|im_end|>"]
    # and a history answer is not mistaken for the answer when truncation cuts the compared one away
    [cut] = render_preferences([pair], tokenizer, "Be careful.", len(example.chosen.input_ids) - 6)
    assert cut.chosen.trained_tokens == 0 and cut.chosen.truncated


def run(capsys, *argv):
    code = run_cli([str(arg) for arg in argv])
    return code, capsys.readouterr().out


def test_data_check_cli_recognises_preference_files(tmp_path, capsys):
    good = write(tmp_path / "prefs.jsonl", STANDARD, CONVERSATIONAL)
    code, out = run(capsys, "data", "check", good, "--tokenizer", TOKENIZER)
    assert code == 0
    assert out.splitlines() == [f"{good}: preference, 2 records, 2 valid (train split)",
                                "ok: 2 examples, no problems found"]
    bad = write(tmp_path / "bad.jsonl", STANDARD, {**STANDARD, "rejected": STANDARD["chosen"]})
    sft = write(tmp_path / "qa.jsonl", {"instruction": "Q?", "response": "A."})
    code, out = run(capsys, "data", "check", sft, bad)
    assert code == 2
    assert f"{bad}:2: error: field 'rejected': is the same text as chosen, so the pair teaches nothing" in out
    assert f"{sft}: instruction, 1 record, 1 valid (train split)" in out
    assert f"{bad}: preference, 2 records, 1 valid (train split)" in out
