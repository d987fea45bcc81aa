"""The texts that evaluation asks about and training must not contain: the shipped benchmark items and the
safety probes, as one ContaminationIndex for `lorakit data check` (data/contamination.py)."""

from __future__ import annotations

from functools import lru_cache

from lorakit.data.contamination import ContaminationIndex, Reference
from lorakit.evaluation.knowledge_items import BENCHMARK_LABELS, BENCHMARKS, load_benchmark
from lorakit.evaluation.safety import load_probes

__all__ = ["held_out_references", "held_out_index"]


def held_out_references() -> list[Reference]:
    """Each benchmark item (PubMedQA: its abstract and question; MMLU: its question) and each shipped probe."""
    references = [Reference(item.id, BENCHMARK_LABELS[item.benchmark], " ".join((*item.context, item.question)))
                  for name in BENCHMARKS for item in load_benchmark(name)]
    return references + [Reference(probe.id, "safety probe", probe.prompt, is_safety_probe=True)
                         for probe in load_probes()]


@lru_cache(maxsize=1)
def held_out_index() -> ContaminationIndex:
    """Built once per process (about 300k 13-grams; a second or two)."""
    return ContaminationIndex(held_out_references())
