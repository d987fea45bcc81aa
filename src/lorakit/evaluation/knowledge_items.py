"""The shipped knowledge benchmarks as typed items, and the one prompt each item is asked with.

The pack lives in lorakit/benchmarks/ (MANIFEST.json names each file's source repository, commit, license and
sha256). Every file is checked against its sha256 when read, so a damaged or edited pack is refused instead of
silently scoring different questions. Every item is asked the same way: a user turn that lists the options as
lettered lines and asks for the letter, so each option is one letter token after the assistant header and one
forward pass scores all of them (evaluation/knowledge.py).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

from lorakit.data.conversation import Message
from lorakit.errors import DataError

__all__ = ["BENCHMARKS", "BENCHMARK_LABELS", "LETTERS", "KnowledgeItem", "pack_dir", "read_manifest",
           "load_benchmark", "select_items", "item_messages", "item_text"]

BENCHMARKS = ("mmlu_medical", "pubmedqa", "mmlu_guard")
BENCHMARK_LABELS = {
    "mmlu_medical": "MMLU medical",  # anatomy, clinical knowledge, college biology and medicine, genetics, prof. med.
    "pubmedqa": "PubMedQA PQA-L",
    "mmlu_guard": "MMLU non-medical",  # the forgetting guard: geography, world religions, computer security
}
LETTERS = "ABCDEFGH"
# --limit takes a seeded sample, not the first rows: MMLU files are sorted by subject, so the first 50 medical
# questions would all be anatomy.
_SAMPLE_SEED = 20


@dataclass(frozen=True)
class KnowledgeItem:
    id: str
    benchmark: str
    question: str
    choices: tuple[str, ...]
    answer: int  # index into choices
    subject: str | None = None
    context: tuple[str, ...] = ()  # PubMedQA: the abstract's paragraphs


def pack_dir() -> Path:
    return Path(str(files("lorakit") / "benchmarks"))


@lru_cache(maxsize=1)
def read_manifest() -> dict:
    return json.loads((pack_dir() / "MANIFEST.json").read_text(encoding="utf-8"))


def _item(benchmark: str, record: dict) -> KnowledgeItem:
    return KnowledgeItem(id=record["id"], benchmark=benchmark, question=record["question"],
                         choices=tuple(record["choices"]), answer=record["answer"], subject=record.get("subject"),
                         context=tuple(record.get("context", ())))


@lru_cache(maxsize=len(BENCHMARKS))
def load_benchmark(name: str) -> tuple[KnowledgeItem, ...]:
    """Every item of a shipped benchmark, after checking the file's sha256 against the manifest."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; the pack has {', '.join(BENCHMARKS)}")
    entry = read_manifest()["benchmarks"][name]
    path = pack_dir() / entry["file"]
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry["sha256"]:
        raise DataError(str(path), None, None, f"sha256 {digest[:12]} is not the {entry['sha256'][:12]} that "
                        "MANIFEST.json records: the shipped benchmark file was changed or damaged",
                        hint="Reinstall lorakit (pip install --force-reinstall lorakit).")
    lines = gzip.decompress(data).decode("utf-8").splitlines()
    return tuple(_item(name, json.loads(line)) for line in lines)


def select_items(name: str, limit: int | None) -> list[KnowledgeItem]:
    """All items of `name`, or a fixed seeded sample of `limit` of them (the same sample on every run)."""
    items = list(load_benchmark(name))
    if limit is None or limit >= len(items):
        return items
    chosen = sorted(random.Random(_SAMPLE_SEED).sample(range(len(items)), limit))
    return [items[i] for i in chosen]


def item_text(item: KnowledgeItem) -> str:
    """The user turn: (abstract,) question, lettered options, and the instruction to answer with a letter.

    >>> print(item_text(KnowledgeItem("x", "mmlu_medical", "Which bone is in the arm?", ("Femur", "Humerus"), 1,
    ...                               subject="anatomy")))
    The following is a multiple choice question about anatomy.
    <BLANKLINE>
    Which bone is in the arm?
    A. Femur
    B. Humerus
    <BLANKLINE>
    Answer with the letter of the correct option.
    """
    options = "\n".join(f"{LETTERS[i]}. {choice}" for i, choice in enumerate(item.choices))
    if item.context:
        head = "Read the abstract and answer the research question.\n\nAbstract: " + " ".join(item.context)
        body = f"Question: {item.question}"
    else:
        head = f"The following is a multiple choice question about {item.subject.replace('_', ' ')}."
        body = item.question
    return f"{head}\n\n{body}\n{options}\n\nAnswer with the letter of the correct option."


def item_messages(item: KnowledgeItem) -> tuple[Message, ...]:
    return (Message("user", item_text(item)),)
