"""The documentation site builds strictly, its reference pages match the code, and nothing is undocumented."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _gen_docs():
    spec = importlib.util.spec_from_file_location("gen_docs", REPO / "scripts" / "gen_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen_docs = _gen_docs()


def test_reference_pages_match_the_code():
    stale = [name for name, build in gen_docs.PAGES.items()
             if (REPO / "docs" / "reference" / name).read_text() != build()]
    assert stale == [], "run: python scripts/gen_docs.py"


def test_every_config_key_is_documented():
    undocumented = [key for key, _, _, description in gen_docs.config_fields() if len(description) < 8]
    assert undocumented == []


@pytest.mark.parametrize("name", ["smollm2_135m_qlora.yaml", "phi4_mini_qlora.yaml"])
def test_the_shipped_full_configs_show_every_key(name):
    import yaml

    def keys(node, prefix=""):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from keys(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}"

    shown = set(keys(yaml.safe_load((REPO / "configs" / name).read_text())))
    assert [key for key, *_ in gen_docs.config_fields() if key not in shown] == []


def test_every_command_and_option_is_documented():
    missing = []
    for name, body in gen_docs.cli_commands():
        summary = body.splitlines()[0]
        if not summary.strip():
            missing.append(name)
        missing += [f"{name}: {row}" for row in body.splitlines() if row.startswith("| `") and "|  |" in row[:-4]]
    assert missing == []


def test_troubleshooting_has_a_section_per_error_kind_with_its_exit_code():
    text = (REPO / "docs" / "troubleshooting.md").read_text()
    documented = {name: int(code) for name, code in re.findall(r"^## `(\w+)` \(exit (\d+)\)$", text, re.MULTILINE)}
    assert documented == {name: code for name, code, _ in gen_docs.error_classes()}


def test_every_page_is_in_the_navigation():
    config = (REPO / "mkdocs.yml").read_text()
    pages = {str(p.relative_to(REPO / "docs")) for p in (REPO / "docs").rglob("*.md")}
    assert pages == set(re.findall(r":\s+(\S+\.md)$", config, re.MULTILINE))


@pytest.mark.slow
def test_site_builds_strictly_without_external_requests(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path)],
                            cwd=REPO, capture_output=True, text=True, env={"NO_MKDOCS_2_WARNING": "1", "PATH": ""})
    assert result.returncode == 0, result.stderr
    index = (tmp_path / "index.html").read_text()
    assert "fonts.googleapis" not in index and "fonts.gstatic" not in index
