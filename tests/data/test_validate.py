"""`check_files` and the training gate `load_checked_conversations`: every problem, exact file:line, verdict."""

from __future__ import annotations

import pytest
from data_files import write_lines

from lorakit.config import DataConfig
from lorakit.data.records import read_conversations
from lorakit.data.render import render_conversation
from lorakit.data.validate import check_files, load_checked_conversations
from lorakit.errors import DataError


def qa(question: str = "What is BP?", answer: str = "Blood pressure.") -> dict:
    return {"instruction": question, "response": answer}


def headlines(report):
    return [issue.headline() for issue in report.sorted_issues()]


def test_clean_file_exits_zero_with_counts(tmp_path):
    path = write_lines(tmp_path, "ok.jsonl", qa("Q1", "A1"), qa("Q2", "A2"))
    report = check_files([path])
    assert headlines(report) == []
    assert (report.examples, report.exit_code(), report.exit_code(strict=True)) == (2, 0, 0)
    assert [(f.format, f.records, f.valid, f.role) for f in report.files] == [("instruction", 2, 2, "train")]


def test_every_problem_of_a_broken_file_is_reported_in_line_order(tmp_path):
    path = write_lines(
        tmp_path, "broken.jsonl",
        qa("Q1", "A1"),
        '{"instruction": "Q2",', '"response": "A2"}',
        "",
        '{"instruction": "Q3" "response": "A3"}',
        {"instruction": "Q4"},
        {"instruction": "Q5", "response": 5},
        b'{"instruction": "Q6 caf\xe9", "response": "A6"}',
        qa("Q1", "A1"),
        qa("q1!", "A1"),
    )
    report = check_files([path])
    assert headlines(report) == [
        f"{path}:2: error: one record is spread over lines 2-3",
        f"{path}:4: warning: blank line",
        f"{path}:5:22: error: invalid JSON: Expecting ',' delimiter",
        f"{path}:6: error: field 'response': missing",
        f"{path}:7: error: field 'response': must be a string, got number",
        f"{path}:8:24: error: not valid UTF-8: byte 0xE9 at byte offset 202 of the file",
        f"{path}:9: warning: exact duplicate of {path}:1",
        f"{path}:10: warning: near-duplicate of {path}:1 (same text ignoring case, spacing and punctuation)",
    ]
    assert report.exit_code() == 2
    assert (report.files[0].records, report.files[0].valid) == (7, 3)  # line 5 is no record


def test_warnings_alone_pass_unless_strict(tmp_path):
    path = write_lines(tmp_path, "dup.jsonl", qa(), qa())
    report = check_files([path])
    assert (report.exit_code(), report.exit_code(strict=True)) == (0, 2)


def test_messages_and_sharegpt_problems_carry_their_field_paths(tmp_path):
    chat = write_lines(tmp_path, "chat.jsonl",
                       {"messages": [{"role": "user", "content": "Q"}, {"role": "doctor", "content": "A"}]},
                       {"messages": [{"role": "user", "content": "Q"}]})
    share = write_lines(tmp_path, "share.jsonl", {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt"}]})
    report = check_files([chat, share])
    assert headlines(report) == [
        f"{chat}:1: error: field 'messages[1].role': unknown role 'doctor'",
        f"{chat}:2: error: field 'messages': the conversation ends with a user turn, not an assistant turn",
        f"{share}:1: error: field 'conversations[1].value': missing",
    ]


def test_mixed_formats_across_files_are_each_detected(tmp_path):
    a = write_lines(tmp_path, "a.jsonl", qa())
    b = write_lines(tmp_path, "b.jsonl", {"instruction": "Q", "input": "", "output": "A2"})
    c = write_lines(tmp_path, "c.jsonl",
                    {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A3"}]})
    d = tmp_path / "d.json"
    d.write_text('[{"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A4"}]}]')
    report = check_files([a, b, c, d])
    assert headlines(report) == []
    assert [f.format for f in report.files] == ["instruction", "alpaca", "sharegpt", "messages"]


def test_duplicates_across_splits_are_leakage_errors(tmp_path):
    train = write_lines(tmp_path, "train.jsonl", qa("Q1", "A1"), qa("Q2", "A2"))
    test = write_lines(tmp_path, "test.jsonl", qa("Q3", "A3"), qa("q2", "A2."))
    report = check_files([train, test])
    assert headlines(report) == [
        f"{test}:2: error: the same example as {train}:2 is in the train split and in the test split (leakage)"]
    assert [(f.role, f.valid) for f in report.files] == [("train", 2), ("test", 1)]


def test_roles_can_be_given_explicitly(tmp_path):
    a = write_lines(tmp_path, "a.jsonl", qa())
    b = write_lines(tmp_path, "b.jsonl", qa())
    assert [i.code for i in check_files([a, b]).issues] == ["duplicate"]
    assert [i.code for i in check_files([a, b], roles={str(b): "validation"}).issues] == ["split-leakage"]


def test_examples_longer_than_max_length_report_their_token_count(tmp_path, tokenizer):
    path = write_lines(tmp_path, "long.jsonl", qa("Q", "A"), qa("Q", "word " * 60), qa("word " * 60, "B"))
    report = check_files([path], tokenizer=tokenizer, max_length=40, system_prompt="Be brief.")
    assert headlines(report) == [
        f"{path}:2: warning: 80 tokens (system prompt and chat template included), more than max_length 40; "
        "it will be truncated",
        f"{path}:3: error: 80 tokens (system prompt and chat template included), more than max_length 40; "
        "the answer starts after token 77, so truncation leaves nothing to train on",
    ]
    assert report.files[0].valid == 2
    [long_answer] = [c for c in read_conversations(path) if c.line == 2]
    assert len(render_conversation(long_answer, tokenizer, "Be brief.", 1000).input_ids) == 80


def test_privacy_findings_are_errors_with_masked_snippets_unless_allowed(tmp_path):
    path = write_lines(tmp_path, "phi.jsonl", qa("Patient: Jane Doe asks about BP", "Call 555-123-4567."))
    report = check_files([path])
    assert headlines(report) == [
        f"{path}:1: error: field 'instruction': possible person's name: \"Patient: J*** *** asks about BP\"",
        f"{path}:1: error: field 'response': possible phone number: \"Call 5**-***-****.\"",
    ]
    assert "Jane" not in str(report.to_json()) and "555-123" not in str(report.to_json())
    allowed = check_files([path], allow_phi=True)
    assert [(i.severity, i.code) for i in allowed.issues] == [("warning", "phi-name"), ("warning", "phi-phone")]
    assert check_files([path], scan_phi=False).issues == []


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    report = check_files([tmp_path / "empty.jsonl", tmp_path / "none.jsonl"])
    assert headlines(report) == [f"{tmp_path / 'empty.jsonl'}: error: contains no records",
                                 f"{tmp_path / 'none.jsonl'}: error: file not found"]


def test_a_file_of_blank_lines_holds_no_records(tmp_path):
    blank = write_lines(tmp_path, "blank.jsonl", "", "")
    report = check_files([blank])
    assert headlines(report) == [f"{blank}: error: contains no records",
                                 f"{blank}:1: warning: blank line",
                                 f"{blank}:2: warning: blank line"]


def test_invalid_lines_are_not_also_reported_as_no_records(tmp_path):
    path = write_lines(tmp_path, "foo.txt", "hello", "{oops")
    report = check_files([path])
    assert [(i.line, i.code) for i in report.sorted_issues()] == [(1, "invalid-json"), (2, "invalid-json")]
    assert "contains no records" not in "\n".join(headlines(report))


def test_report_json_is_machine_readable(tmp_path):
    path = write_lines(tmp_path, "x.jsonl", qa(), {"instruction": "Q"})
    data = check_files([path]).to_json()
    assert (data["ok"], data["examples"], data["errors"], data["warnings"]) == (False, 1, 1, 0)
    assert data["issues"] == [{"path": str(path), "line": 2, "severity": "error", "code": "missing-field",
                               "message": "missing", "field": "response", "column": None,
                               "hint": 'Add a non-empty "response" string.', "end_line": None}]


def config_for(*paths, **extra) -> DataConfig:
    return DataConfig(train_file=[str(p) for p in paths], system_prompt="Be brief.", **extra)


def test_training_gate_returns_conversations_of_clean_data(tmp_path, tokenizer):
    path = write_lines(tmp_path, "ok.jsonl", qa("Q1", "A1"), qa("Q2", "A2"))
    conversations, report = load_checked_conversations(config_for(path), tokenizer, 64)
    assert [(c.line, c.messages[1].content) for c in conversations] == [(1, "A1"), (2, "A2")]
    assert report.data_sha256 is not None and report.skipped == []


def test_training_gate_refuses_errors_listing_file_and_line(tmp_path, tokenizer):
    path = write_lines(tmp_path, "bad.jsonl", qa(), {"instruction": "Q2"}, "{oops")
    with pytest.raises(DataError) as caught:
        load_checked_conversations(config_for(path), tokenizer, 64)
    assert caught.value.message == (
        f"{path}: 2 problems in the data; training did not start:\n"
        f"  {path}:2: error: field 'response': missing\n"
        f"  {path}:3:2: error: invalid JSON: Expecting property name enclosed in double quotes")
    assert "--skip-invalid" in caught.value.hint


def test_training_gate_lists_only_the_first_twenty_problems(tmp_path, tokenizer):
    path = write_lines(tmp_path, "bad.jsonl", *[{"instruction": f"Q{i}"} for i in range(25)])
    with pytest.raises(DataError) as caught:
        load_checked_conversations(config_for(path), tokenizer, 64)
    lines = caught.value.message.splitlines()
    assert len(lines) == 22 and lines[-1] == "  ... and 5 more"


def test_training_gate_refuses_phi_unless_allowed(tmp_path, tokenizer):
    path = write_lines(tmp_path, "phi.jsonl", qa("Mail jane@example.org", "A"), qa("Q2", "A2"))
    with pytest.raises(DataError, match="possible e-mail address") as caught:
        load_checked_conversations(config_for(path), tokenizer, 64)
    assert "jane@example.org" not in str(caught.value) and "--allow-phi" in caught.value.hint
    conversations, report = load_checked_conversations(config_for(path, allow_phi=True), tokenizer, 64)
    assert len(conversations) == 2 and report.manifest_notes()["phi_findings_allowed"] == 1


def test_skip_invalid_trains_on_valid_lines_and_lists_exactly_the_skipped_ones(tmp_path, tokenizer, caplog):
    path = write_lines(tmp_path, "mixed.jsonl", qa("Q1", "A1"), {"instruction": "Q2"}, '{"instruction": "Q3",',
                       '"response": "A3"}', "{oops", qa("Q6", "A6"), qa("Call 555-123-4567", "A7"))
    conversations, report = load_checked_conversations(config_for(path, skip_invalid=True), tokenizer, 64)
    assert [c.line for c in conversations] == [1, 6]
    assert report.skipped == [(str(path), 2), (str(path), 3), (str(path), 4), (str(path), 5), (str(path), 7)]
    assert f"skipped 5 line(s) of {path}: 2-5, 7" in caplog.text
    assert "555-123" not in caplog.text
    assert report.manifest_notes()["skipped_invalid_lines"] == [f"{path}:{n}" for n in (2, 3, 4, 5, 7)]


def test_skip_invalid_cannot_skip_a_missing_file_or_everything(tmp_path, tokenizer):
    good = write_lines(tmp_path, "good.jsonl", qa())
    with pytest.raises(DataError, match="file not found"):
        load_checked_conversations(config_for(good, tmp_path / "none.jsonl", skip_invalid=True), tokenizer, 64)
    bad = write_lines(tmp_path, "bad.jsonl", {"instruction": "Q"})
    with pytest.raises(DataError, match="no valid examples are left"):
        load_checked_conversations(config_for(bad, skip_invalid=True), tokenizer, 64)


def test_train_files_are_one_split_for_the_gate_whatever_their_names(tmp_path, tokenizer):
    train = write_lines(tmp_path, "train.jsonl", qa())
    test = write_lines(tmp_path, "test.jsonl", qa())
    conversations, report = load_checked_conversations(config_for(train, test), tokenizer, 64)
    assert len(conversations) == 2 and [i.code for i in report.issues] == ["duplicate"]


def test_a_conversation_the_chat_template_refuses_is_an_error_not_a_crash(tmp_path, tokenizer):
    strict = "{% for m in messages %}{% if loop.index0 > 0 and m['role'] == messages[loop.index0 - 1]['role'] %}" \
             "{{ raise_exception('roles must alternate') }}{% endif %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    original = tokenizer.chat_template
    path = write_lines(tmp_path, "chat.jsonl", *[
        {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]},
        {"messages": [{"role": "user", "content": "Q"}, {"role": "user", "content": "Q?"},
                      {"role": "assistant", "content": "B"}]},
    ])
    try:
        tokenizer.chat_template = strict
        report = check_files([path], tokenizer=tokenizer, max_length=64, system_prompt="")
    finally:
        tokenizer.chat_template = original
    assert headlines(report) == [
        f"{path}:2: warning: field 'messages[1].role': two user turns in a row",
        f"{path}:2: error: the model's chat template refuses this conversation: roles must alternate",
    ]
    assert report.files[0].valid == 1
