"""The pinned environment is one environment: pyproject, environment.yml, Makefile, venv, CI."""

import re
import tomllib
from importlib import metadata
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pyproject_pins() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project["dependencies"] + project["optional-dependencies"]["dev"]


def test_every_dependency_is_pinned_exactly():
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[\w.]+", p) for p in _pyproject_pins())


def test_environment_yml_carries_the_same_pins_as_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert sorted(p for p in pip if "==" in p) == sorted(_pyproject_pins())


def test_makefile_installs_the_pinned_torch_first():
    torch_pin = next(p for p in _pyproject_pins() if p.startswith("torch=="))
    makefile = (ROOT / "Makefile").read_text()
    assert f"TORCH   := {torch_pin}" in makefile
    assert makefile.index("$(PIP) install -q $(TORCH)") < makefile.index('install -q -e ".[dev]"')


def test_installed_versions_match_the_pins():
    for pin in _pyproject_pins():
        name, version = pin.split("==")
        assert metadata.version(name).split("+")[0] == version, name


def test_ci_runs_exactly_the_test_command_written_in_readme():
    readme = (ROOT / "README.md").read_text()
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    commands = [c for c in ci if c and not c.startswith("#") and not c.startswith(("set ", "cd "))]
    assert commands == ["make test"]
    assert re.search(r"^make test\s*$", readme, re.M), "README must show `make test` as a command"
    assert re.search(r"^make book\s*$", readme, re.M), "README must show `make book` as a command"


def test_no_deps_requirements_are_pinned_installed_and_installed_by_make_setup():
    lines = (ROOT / "requirements-whisper.txt").read_text().splitlines()
    pins = [line for line in lines if line and not line.startswith("#")]
    assert pins and all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[\w.]+", p) for p in pins)
    for pin in pins:
        name, version = pin.split("==")
        assert metadata.version(name) == version, name
    assert "install -q --no-deps -r requirements-whisper.txt" in (ROOT / "Makefile").read_text()
