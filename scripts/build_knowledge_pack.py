"""Build src/lorakit/benchmarks/ (the knowledge pack `lorakit eval --knowledge` reads) from git mirrors.

Run once by a maintainer; nothing downloads at run time. Each source is a bare git directory (as the `fetch`
tool or `git clone --bare` leaves it) read at a named commit, so the manifest can say exactly what was shipped:

    python scripts/build_knowledge_pack.py --mirage DIR --mmlu-full DIR --pubmedqa DIR --hendrycks DIR

- MMLU's six medical subjects come from Teddy-XiongGZ/MIRAGE (rawdata/mmlu/data/test/*.csv, the original MMLU
  test CSVs: no header, answer letter). hendrycks/test itself holds only code (its data is a tarball elsewhere).
- The non-medical forgetting guard comes from HaeChan0305/MLILAB-FedLLM (data/mmlu/test/*.csv, all 57 subjects,
  re-saved with a header and 0-3 answers). Its six medical files equal MIRAGE's row by row, which this script
  checks before it ships anything from it.
- PubMedQA PQA-L is pubmedqa/pubmedqa data/ori_pqal.json; only QUESTION, CONTEXTS and final_decision are kept
  (the labels, MeSH terms, year and long answer are not used by the prompt).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import json
import subprocess
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "lorakit" / "benchmarks"
MEDICAL = ("anatomy", "clinical_knowledge", "college_biology", "college_medicine", "medical_genetics",
           "professional_medicine")
GUARD = ("high_school_geography", "world_religions", "computer_security")
LETTERS = "ABCD"
PUBMEDQA_CHOICES = ("yes", "no", "maybe")


def git_show(git_dir: str, path: str, commit: str = "HEAD") -> str:
    return subprocess.run(["git", f"--git-dir={git_dir}", "show", f"{commit}:{path}"], capture_output=True,
                          text=True, check=True).stdout


def head_commit(git_dir: str) -> str:
    return subprocess.run(["git", f"--git-dir={git_dir}", "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()


def original_rows(text: str) -> list[list[str]]:
    rows = list(csv.reader(io.StringIO(text)))
    assert all(len(r) == 6 and r[5] in LETTERS for r in rows), "original MMLU rows: question, A-D, letter"
    return rows


def reformatted_rows(text: str) -> list[list[str]]:
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["question", "choice0", "choice1", "choice2", "choice3", "answer"], rows[0]
    return [r[:5] + [LETTERS[int(r[5])]] for r in rows[1:]]


def mmlu_items(subject: str, rows: list[list[str]]) -> list[dict]:
    return [{"id": f"mmlu/{subject}/{i}", "subject": subject, "question": r[0], "choices": r[1:5],
             "answer": LETTERS.index(r[5])} for i, r in enumerate(rows)]


def write_gz(name: str, items: list[dict]) -> dict:
    text = "".join(json.dumps(item, ensure_ascii=False, sort_keys=True) + "\n" for item in items)
    data = gzip.compress(text.encode("utf-8"), compresslevel=9, mtime=0)  # mtime=0: the same bytes every build
    (OUT / name).write_bytes(data)
    return {"file": name, "items": len(items), "sha256": hashlib.sha256(data).hexdigest()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("mirage", "mmlu-full", "pubmedqa", "hendrycks"):
        parser.add_argument(f"--{name}", required=True, help="bare git directory")
    args = parser.parse_args()
    medical, guard = [], []
    for subject in MEDICAL:
        rows = original_rows(git_show(args.mirage, f"rawdata/mmlu/data/test/{subject}_test.csv"))
        same = reformatted_rows(git_show(args.mmlu_full, f"data/mmlu/test/{subject}_test.csv"))
        assert rows == same, f"{subject}: the full MMLU copy differs from the original CSV"
        medical += mmlu_items(subject, rows)
    for subject in GUARD:
        guard += mmlu_items(subject, reformatted_rows(git_show(args.mmlu_full, f"data/mmlu/test/{subject}_test.csv")))
    raw = json.loads(git_show(args.pubmedqa, "data/ori_pqal.json"))
    pubmedqa = [{"id": f"pubmedqa/{pmid}", "question": r["QUESTION"], "context": r["CONTEXTS"],
                 "choices": list(PUBMEDQA_CHOICES), "answer": PUBMEDQA_CHOICES.index(r["final_decision"])}
                for pmid, r in raw.items()]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "LICENSE-MMLU.txt").write_text(git_show(args.hendrycks, "LICENSE"), encoding="utf-8")
    (OUT / "LICENSE-PubMedQA.txt").write_text(git_show(args.pubmedqa, "LICENSE"), encoding="utf-8")
    mmlu_source = {"dataset": "MMLU (Hendrycks et al., 2021), test split", "license": "MIT",
                   "license_file": "LICENSE-MMLU.txt", "license_from": f"hendrycks/test@{head_commit(args.hendrycks)}"}
    manifest = {
        "built_by": "scripts/build_knowledge_pack.py",
        "benchmarks": {
            "mmlu_medical": {**write_gz("mmlu_medical.jsonl.gz", medical), **mmlu_source, "subjects": list(MEDICAL),
                             "source": {"repository": "Teddy-XiongGZ/MIRAGE", "commit": head_commit(args.mirage),
                                        "paths": [f"rawdata/mmlu/data/test/{s}_test.csv" for s in MEDICAL]}},
            "pubmedqa": {**write_gz("pubmedqa_pqal.jsonl.gz", pubmedqa),
                         "dataset": "PubMedQA PQA-L (Jin et al., 2019), the 1,000 expert-labelled questions",
                         "license": "MIT", "license_file": "LICENSE-PubMedQA.txt",
                         "source": {"repository": "pubmedqa/pubmedqa", "commit": head_commit(args.pubmedqa),
                                    "paths": ["data/ori_pqal.json"]},
                         "trimmed": "only QUESTION, CONTEXTS (as a list) and final_decision are kept"},
            "mmlu_guard": {**write_gz("mmlu_guard.jsonl.gz", guard), **mmlu_source, "subjects": list(GUARD),
                           "source": {"repository": "HaeChan0305/MLILAB-FedLLM", "commit": head_commit(args.mmlu_full),
                                      "paths": [f"data/mmlu/test/{s}_test.csv" for s in GUARD],
                                      "note": "MMLU re-saved with a header and 0-3 answers; its six medical files "
                                              "equal the original CSVs row by row (checked when built)"}},
        },
    }
    (OUT / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    for name, entry in manifest["benchmarks"].items():
        print(name, entry["items"], entry["sha256"])


if __name__ == "__main__":
    main()
