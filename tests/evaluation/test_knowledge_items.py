"""The shipped knowledge pack: files match the manifest's sha256s and counts, licenses ship, prompts are fixed."""

from __future__ import annotations

import hashlib
import shutil

import pytest

from lorakit.errors import DataError
from lorakit.evaluation import knowledge_items
from lorakit.evaluation.knowledge_items import (
    BENCHMARKS,
    item_text,
    load_benchmark,
    pack_dir,
    read_manifest,
    select_items,
)

COUNTS = {"mmlu_medical": 1089, "pubmedqa": 1000, "mmlu_guard": 469}


def test_manifest_sha256_and_counts_match_the_shipped_files():
    manifest = read_manifest()["benchmarks"]
    assert set(manifest) == set(BENCHMARKS)
    for name, entry in manifest.items():
        data = (pack_dir() / entry["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], name
        assert entry["items"] == COUNTS[name] == len(load_benchmark(name)), name
        assert len(entry["source"]["commit"]) == 40 and entry["source"]["repository"], name
        assert (pack_dir() / entry["license_file"]).read_text().startswith("MIT License"), name


def test_items_are_well_formed_and_unique():
    medical = load_benchmark("mmlu_medical")
    assert {i.subject for i in medical} == {"anatomy", "clinical_knowledge", "college_biology", "college_medicine",
                                            "medical_genetics", "professional_medicine"}
    assert sum(i.subject == "professional_medicine" for i in medical) == 272
    pubmedqa = load_benchmark("pubmedqa")
    assert [sum(i.answer == k for i in pubmedqa) for k in range(3)] == [552, 338, 110]  # yes, no, maybe
    assert all(i.choices == ("yes", "no", "maybe") and i.context for i in pubmedqa)
    every = [i for name in BENCHMARKS for i in load_benchmark(name)]
    assert len({i.id for i in every}) == len(every)
    assert all(0 <= i.answer < len(i.choices) for i in every)


def test_limit_takes_the_same_spread_sample_every_time():
    first = select_items("mmlu_medical", 30)
    assert [i.id for i in first] == [i.id for i in select_items("mmlu_medical", 30)]
    assert len(first) == 30 and len({i.subject for i in first}) > 3  # not just the first subject's rows
    assert len(select_items("pubmedqa", None)) == 1000 == len(select_items("pubmedqa", 5000))


def test_pubmedqa_prompt_carries_the_abstract_and_the_lettered_options():
    item = load_benchmark("pubmedqa")[0]
    text = item_text(item)
    assert text.startswith("Read the abstract and answer the research question.\n\nAbstract: " + item.context[0])
    assert text.endswith(f"Question: {item.question}\nA. yes\nB. no\nC. maybe\n\n"
                         "Answer with the letter of the correct option.")


def test_a_changed_pack_file_is_refused(tmp_path, monkeypatch):
    copy = tmp_path / "benchmarks"
    shutil.copytree(pack_dir(), copy)
    (copy / "mmlu_guard.jsonl.gz").write_bytes(b"not the shipped file")
    monkeypatch.setattr(knowledge_items, "pack_dir", lambda: copy)
    load_benchmark.cache_clear()
    try:
        with pytest.raises(DataError, match="is not the dd2ad127f251 that MANIFEST.json records"):
            load_benchmark("mmlu_guard")
    finally:
        load_benchmark.cache_clear()
