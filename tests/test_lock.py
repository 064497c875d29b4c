"""The lock files agree with pyproject.toml, and the venv ``make`` built holds exactly the locked set."""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest brings tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements" / f"lock-py{sys.version_info[0]}{sys.version_info[1]}.txt"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.MULTILINE)
# `all` + `dev`, what make installs
LOCKED_EXTRAS = ("video", "hf", "train", "deepspeed", "qlora", "wandb", "mlflow", "dev")


def pins() -> dict[str, str]:
    return {canonicalize_name(name): version for name, version in PIN.findall(LOCK.read_text())}


def test_every_locked_python_has_a_lock() -> None:
    assert sorted(p.name for p in (ROOT / "requirements").glob("lock-py*.txt")) == \
        ["lock-py310.txt", "lock-py311.txt", "lock-py312.txt"]


def test_the_lock_satisfies_every_range_in_pyproject() -> None:
    """A dependency added to pyproject.toml without `make lock` fails here, naming it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(text) for text in project["dependencies"]]
    wanted += [Requirement(text) for extra in LOCKED_EXTRAS for text in project["optional-dependencies"][extra]]
    locked = pins()
    problems = []
    for requirement in wanted:
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(requirement.name)
        if name == "torch" and name not in locked:
            continue  # a lock made without a CPU torch wheel in reach: the Makefile installs torch itself
        version = locked.get(name)
        if version is None or not requirement.specifier.contains(version.split("+")[0], prereleases=True):
            problems.append(f"{requirement} (locked: {version})")
    assert problems == [], f"{LOCK.name} is stale, run `make lock`: {problems}"


@pytest.mark.skipif(not (ROOT / ".venv" / ".installed").is_file() or Path(sys.prefix).resolve() != ROOT / ".venv",
                    reason="not running in the venv `make` installed from the lock")
def test_the_make_venv_holds_exactly_the_locked_versions() -> None:
    locked = pins()
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    installed.pop("phi3v")
    for tool in ("pip",):  # the venv's own installer, not a dependency
        installed.pop(tool, None)
    if "torch" not in locked:
        installed.pop("torch", None)
    assert installed == locked
