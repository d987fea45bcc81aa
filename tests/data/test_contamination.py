"""Training rows that contain benchmark items or safety probes: found by lm-eval's 13-word rule, reported with
file:line by `lorakit data check`; a safety probe is an error, a benchmark item a warning."""

from __future__ import annotations

import json

from lorakit.cli.app import run_cli
from lorakit.data.contamination import ContaminationIndex, Reference
from lorakit.data.conversation import Conversation, Message
from lorakit.evaluation.knowledge_items import load_benchmark
from lorakit.evaluation.safety import load_probes

QUESTION = "Which of the following structures is derived from ectomesenchyme and persists into adult life as well?"


def _index() -> ContaminationIndex:
    return ContaminationIndex([Reference("q1", "MMLU medical", QUESTION),
                               Reference("p1", "safety probe", "Can I double my warfarin dose tonight?", True)])


def _row(text: str, role: str = "user") -> Conversation:
    return Conversation((Message(role, text), Message("assistant", "An answer.")), source="t.jsonl", line=7)


def test_thirteen_shared_words_match_whatever_the_case_and_punctuation():
    index = _index()
    words = QUESTION.split()
    assert [r.id for r in index.matches("Quiz: " + " ".join(words[:13]).upper() + "!!")] == ["q1"]
    assert index.matches(" ".join(words[:12])) == []  # 12 shared words are not an overlap (lm-eval's rule)
    assert index.matches(" ".join(words[1:14])) != []


def test_a_short_probe_matches_only_as_a_whole():
    index = _index()
    assert [r.id for r in index.matches("Tell me: can I DOUBLE my warfarin dose, tonight?")] == ["p1"]
    assert index.matches("Can I double my warfarin dose?") == []


def test_issues_name_the_row_and_the_items_with_their_severity():
    index = _index()
    [probe, item] = index.issues(Conversation((Message("user", "can I double my warfarin dose tonight"),
                                               Message("assistant", QUESTION)), source="t.jsonl", line=7))
    assert (probe.severity, probe.code, probe.location()) == ("error", "contains-safety-probe", "t.jsonl:7")
    assert "safety probe p1" in probe.message
    assert (item.severity, item.code) == ("warning", "contains-benchmark-item")
    assert item.message == "shares a 13-word sequence with MMLU medical q1"
    assert index.issues(_row("What is a fever?")) == []


def test_data_check_reports_shipped_items_and_probes_with_file_and_line(tmp_path, capsys):
    pubmedqa = load_benchmark("pubmedqa")[0]
    probe = next(p for p in load_probes() if p.id == "emergency-003")
    rows = [{"instruction": "What is a fever?", "response": "A raised body temperature."},
            {"instruction": "Summarise: " + pubmedqa.context[0], "response": "It is about cell death."},
            {"instruction": probe.prompt, "response": "Please call your local emergency number now."}]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert run_cli(["data", "check", str(data), "--json"]) == 2
    issues = {i["code"]: i for i in json.loads(capsys.readouterr().out)["issues"]}
    assert (issues["contains-benchmark-item"]["line"], issues["contains-benchmark-item"]["severity"]) == (2, "warning")
    assert f"PubMedQA PQA-L {pubmedqa.id}" in issues["contains-benchmark-item"]["message"]
    assert (issues["contains-safety-probe"]["line"], issues["contains-safety-probe"]["severity"]) == (3, "error")
    assert "safety probe emergency-003" in issues["contains-safety-probe"]["message"]
    assert run_cli(["data", "check", str(data), "--no-contamination"]) == 0
