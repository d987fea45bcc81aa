"""The repository stands alone: the test tokenizer is committed and matches the embedded model's GGUF, and no
code or test reads a folder beside the checkout."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import TOKENIZER_DIR

REPO = Path(__file__).resolve().parents[1]
CODE_FOLDERS = ("src", "tests", "bench", "scripts", ".ci")
# A path that climbs out of the checkout into the folder beside it, or `parents[N].parent`. The folder's name is
# assembled so that this file does not itself name it.
BESIDE = "sha" + "red"
OUTSIDE = re.compile(rf"\.\./{BESIDE}|parent\s*/\s*[\"']{BESIDE}[\"']|parents\[\d\]\.parent\b")


def test_fixture_tokenizer_is_inside_the_repository():
    assert TOKENIZER_DIR.resolve().is_relative_to(REPO)
    assert (TOKENIZER_DIR / "tokenizer.json").is_file() and (TOKENIZER_DIR / "chat_template.jinja").is_file()


def test_no_code_reads_outside_the_repository():
    offenders = []
    for folder in CODE_FOLDERS:
        for path in (REPO / folder).rglob("*"):
            if path.suffix in {".py", ".sh", ".yaml", ".toml", ""} and path.is_file() and path != Path(__file__):
                text = path.read_text(errors="ignore")
                offenders += [f"{path.relative_to(REPO)}: {m.group(0)}" for m in OUTSIDE.finditer(text)]
    assert offenders == []


def test_fixture_tokenizer_matches_the_embedded_gguf(tokenizer):
    from transformers import AutoTokenizer

    from lorakit.model.gguf_cache import embedded_gguf_path

    try:
        gguf = embedded_gguf_path()
    except Exception as exc:  # noqa: BLE001 - the embedded model is installed by scripts/setup.sh --test
        pytest.fail(f"embedded model missing: {exc}")
    from_gguf = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    text = "<|im_start|>user\nWhat is hypertension? Ünïcode 123<|im_end|>\n"
    assert tokenizer(text)["input_ids"] == from_gguf(text)["input_ids"]
    assert tokenizer.chat_template == from_gguf.chat_template
    assert (tokenizer.eos_token, tokenizer.pad_token) == (from_gguf.eos_token, from_gguf.pad_token) == ("<|im_end|>",) * 2
