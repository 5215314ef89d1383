"""What the replayed build left in the venv, against what the locks promise."""

from __future__ import annotations

import re
from email.parser import HeaderParser
from pathlib import Path

from deploy.image_check.report import Check, verdict

PROJECT = "broker"
ALLOWED_EXTRA = {"pip"}
"""The venv's own installer, put there by `python -m venv` (ensurepip), not a dependency."""


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_pins(path: Path) -> dict[str, str]:
    """name -> version of every `name==version` line of a pip lock file."""
    pins: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line and not line[0].isspace() and not line.startswith("#") and "==" in line:
            name, version = line.split(" ", 1)[0].split(";", 1)[0].split("==")
            pins[normalise(name.split("[", 1)[0])] = version
    return pins


def site_packages(venv: Path) -> Path:
    [found] = list(venv.glob("lib/python3.*/site-packages"))
    return found


def installed(venv: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for metadata in site_packages(venv).glob("*.dist-info/METADATA"):
        headers = HeaderParser().parsestr(metadata.read_text(encoding="utf-8", errors="replace"))
        found[normalise(headers["Name"])] = headers["Version"]
    return found


def venv_checks(venv: Path, lock: Path, project_version: str) -> list[Check]:
    config = (venv / "pyvenv.cfg").read_text(encoding="utf-8")
    version = next((line.split("=", 1)[1].strip() for line in config.splitlines() if line.startswith("version")), "")
    have = installed(venv)
    want = {**locked_pins(lock), PROJECT: project_version}
    problems = [
        f"{name} {want[name]} locked, {have.get(name, 'not installed')} installed"
        for name in want
        if have.get(name) != want[name]
    ]
    problems += [
        f"{name} {have[name]} installed but not locked" for name in sorted(set(have) - set(want) - ALLOWED_EXTRA)
    ]
    checks = [
        verdict(
            "the image's venv holds exactly the locked packages (the build backend removed)",
            "each dist-info in the replayed /opt/broker compared with requirements.lock and pyproject's version",
            problems,
            [f"{len(want)} packages as locked, Python {version} (python:3.11 stands in: Debian's python3.11)"],
        )
    ]
    sources = [p for p in site_packages(venv).rglob("*.py")]
    uncompiled = [p for p in sources if not list(p.parent.glob(f"__pycache__/{p.stem}.cpython-*.pyc"))]
    checks.append(
        verdict(
            "bytecode compiled at build time (nothing for Python to write at run time)",
            "a __pycache__/*.pyc next to every .py in site-packages",
            [f"{len(uncompiled)} of {len(sources)} modules have no .pyc, e.g. {uncompiled[0]}"] if uncompiled else [],
            [f"{len(sources)} modules compiled"],
        )
    )
    return checks
