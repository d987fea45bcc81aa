"""What a fresh clone promises about itself: a LICENSE matching pyproject, a version the CLI prints, and
pyproject comments that name files which exist."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from lorakit.cli.app import run_cli

REPO = Path(__file__).resolve().parents[1]


def test_license_file_is_the_apache_2_text_pyproject_declares():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["project"]["license"] == "Apache-2.0"
    text = (REPO / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "http://www.apache.org/licenses/LICENSE-2.0" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_version_flag_prints_the_package_version(capsys):
    import lorakit

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert lorakit.__version__ == pyproject["project"]["version"]
    assert run_cli(["--version"]) == 0
    assert capsys.readouterr().out == f"lorakit {lorakit.__version__}\n"


def test_pyproject_comments_name_only_files_that_exist():
    comments = [line.split("#", 1)[1] for line in (REPO / "pyproject.toml").read_text().splitlines() if "#" in line]
    named = [m.group(0) for comment in comments for m in re.finditer(r"[\w.-]*/[\w./-]+\.(?:txt|sh|py|toml|yaml|cfg)", comment)]
    assert "scripts/setup.sh" in named
    assert [path for path in named if not (REPO / path).exists()] == []
    assert 'torch==2.13.0' in (REPO / "scripts" / "setup.sh").read_text()
