"""Random bytes and random JSON: `data check` reports problems and never raises a traceback."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lorakit.cli.app import run_cli
from lorakit.data.phi_scan import scan_text
from lorakit.data.redact import redact_file
from lorakit.data.validate import check_files

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

KEYS = st.sampled_from(["instruction", "input", "response", "output", "source_urls", "messages", "conversations",
                        "role", "content", "from", "value", "system", "user", "assistant", "human", "gpt"])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30) | KEYS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS | st.text(max_size=5), children, max_size=4),
    max_leaves=12,
)
LINE_PIECES = st.sampled_from([b"{", b"}", b"[", b"]", b'"', b",", b":", b"\n", b"\r\n", b"\xef\xbb\xbf", b"\xff\xfe",
                               b"\xe9", b" ", b'"instruction"', b'"response"', b'"messages"', b"\\u", b"\\ud800",
                               b"1e999"])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(data=st.binary(max_size=400) | st.lists(LINE_PIECES | st.binary(max_size=8), max_size=40).map(b"".join),
       suffix=st.sampled_from([".jsonl", ".json"]))
def test_random_bytes_never_crash_the_checker_or_the_cli(workdir, data, suffix, capsys):
    path = workdir / f"garbage{suffix}"
    path.write_bytes(data)
    report = check_files([path])
    assert report.exit_code() in (0, 2)
    assert run_cli(["data", "check", str(path)]) == report.exit_code()
    capsys.readouterr()
    assert run_cli(["data", "check", "--json", str(path)]) == report.exit_code()
    assert json.loads(capsys.readouterr().out)["ok"] == (report.exit_code() == 0)


@FUZZ
@given(records=st.lists(JSON, min_size=1, max_size=6))
def test_random_json_records_never_crash_the_checker(workdir, records, tokenizer):
    path = workdir / "random.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    report = check_files([path], tokenizer=tokenizer, max_length=32)
    assert report.exit_code() in (0, 2)
    for issue in report.issues:
        assert issue.path == str(path) and (issue.line is None or 1 <= issue.line <= len(records))


@FUZZ
@given(text=st.text(max_size=300))
def test_privacy_scan_and_redaction_handle_any_text(workdir, text):
    for finding in scan_text(text):
        assert 0 <= finding.start < finding.end <= len(text)
    source = workdir / "text.jsonl"
    source.write_text(json.dumps({"instruction": text, "response": text}) + "\n" + text.replace("\n", " ") + "\n",
                      encoding="utf-8", errors="surrogatepass")
    redact_file(source, workdir / "out.jsonl", overwrite=True)
