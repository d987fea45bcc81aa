"""The shipped probe set, user probe files, and the per-category summary that flags regressions."""

import json

import pytest

from lorakit.errors import DataError
from lorakit.evaluation.safety import (
    CATEGORIES,
    Probe,
    ProbeScore,
    compare,
    load_probes,
    select_probes,
    summarize,
)

EMERGENCY_TOPICS = {"chest": "chest pain", "arm": "stroke signs", "end my life": "suicidal thoughts",
                    "swallowed": "overdose"}


def test_shipped_probes_cover_every_category():
    probes = load_probes()
    assert len(probes) >= 60
    assert {p.category for p in probes} == set(CATEGORIES)
    assert all(sum(p.category == c for p in probes) >= 8 for c in CATEGORIES)
    assert len({p.id for p in probes}) == len(probes)
    emergencies = " ".join(p.prompt.lower() for p in probes if p.category == "emergency")
    for marker, topic in EMERGENCY_TOPICS.items():
        assert marker in emergencies, f"no emergency probe about {topic}"


def _write(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_user_probe_files_come_before_the_shipped_ones(tmp_path):
    extra = _write(tmp_path / "mine.jsonl", [{"id": "mine-1", "category": "dosing", "prompt": "How much?"}])
    probes = load_probes([extra])
    assert probes[0] == Probe("mine-1", "dosing", "How much?", str(extra), 1)
    assert len(probes) == len(load_probes()) + 1
    assert load_probes([extra], include_builtin=False) == [probes[0]]
    # A per-category limit keeps the user's own probe.
    assert [p.id for p in select_probes(probes, 1) if p.category == "dosing"] == ["mine-1"]


@pytest.mark.parametrize("record,line,field,message", [
    ({"id": "x", "category": "cardiology", "prompt": "?"}, 1, "category", "unknown category 'cardiology'"),
    ({"id": "x", "category": "dosing"}, 1, "prompt", "missing or empty"),
    ({"id": "x", "category": "dosing", "prompt": "?", "notes": ""}, 1, "notes", "unknown field"),
    ("{not json", 1, None, "not valid JSON"),
])
def test_bad_probe_lines_name_file_line_and_field(tmp_path, record, line, field, message):
    path = _write(tmp_path / "bad.jsonl", [record])
    with pytest.raises(DataError) as caught:
        load_probes([path], include_builtin=False)
    assert (caught.value.path, caught.value.line, caught.value.field) == (str(path), line, field)
    assert message in caught.value.message


def test_duplicate_ids_across_files_are_rejected(tmp_path):
    path = _write(tmp_path / "dup.jsonl", [{"id": "dosing-001", "category": "dosing", "prompt": "Again?"}])
    with pytest.raises(DataError, match="duplicate probe id 'dosing-001' \\(first at .*dup.jsonl:1\\)"):
        load_probes([path])


def test_missing_probe_file(tmp_path):
    with pytest.raises(DataError, match="probe file not found"):
        load_probes([tmp_path / "nope.jsonl"])


def test_select_probes_keeps_the_first_n_of_each_category():
    probes = [Probe(f"{c}-{i}", c, "?") for c in ("dosing", "emergency") for i in range(3)]
    assert [p.id for p in select_probes(probes, 2)] == ["dosing-0", "dosing-1", "emergency-0", "emergency-1"]
    assert select_probes(probes, None) == probes


def _score(passed, deferred=False, failed=()):
    return ProbeScore(passed, tuple(failed) if not passed else (), deferred)


def test_summary_and_comparison_flag_categories_that_got_worse():
    base = summarize([("dosing", _score(True, True)), ("dosing", _score(True, True)),
                      ("emergency", _score(False, failed=["directs_to_emergency_care"])),
                      ("diagnosis", _score(True, True))])
    tuned = summarize([("dosing", _score(True, True)), ("dosing", _score(False, True, ["no_personal_dose"])),
                       ("emergency", _score(True)), ("diagnosis", _score(True, False))])
    assert list(base) == ["emergency", "dosing", "diagnosis"]  # CATEGORIES order
    assert tuned["dosing"].pass_rate == 0.5 and tuned["dosing"].rule_failures == {"no_personal_dose": 1}
    by_category = {c.category: c for c in compare(base, tuned)}
    assert by_category["dosing"].worse_reasons == ["pass rate fell from 100% to 50%"]
    assert not by_category["emergency"].worse  # improved
    # Same pass rate, but the model stopped referring the user on by itself: flagged too.
    assert by_category["diagnosis"].worse_reasons == [
        "the model itself deferred to a professional less often (100% -> 0%)"]
    assert by_category["dosing"].to_json()["tuned"]["pass_rate"] == 0.5
