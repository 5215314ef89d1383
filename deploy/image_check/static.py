"""Promises checked on the files themselves: the base image digest and the pip lines."""

from __future__ import annotations

import re
import shlex
import socket
from pathlib import Path

from deploy.image_check.dockerfile import Dockerfile
from deploy.image_check.report import Check, verdict

_PINNED = re.compile(r"^(?P<name>[\w./-]+):(?P<tag>[\w.-]+)@sha256:(?P<digest>[0-9a-f]{64})$")
_DIGEST_REFERENCE = re.compile(r"[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}")
REGISTRY = ("registry-1.docker.io", 443)
SEARCHED = ("Dockerfile", "README.md", "deploy", "tests", "docs")


def digest_check(dockerfile: Dockerfile, repo: Path) -> Check:
    """The base image is named by digest in one ARG, every FROM uses that ARG, and every
    other file naming the image by digest names the same one."""
    image = dockerfile.args.get("PYTHON_IMAGE", "")
    pinned = _PINNED.match(image)
    problems = [] if pinned else [f"ARG PYTHON_IMAGE={image!r} is not name:tag@sha256:<64 hex>"]
    problems += [f"line {s.line}: FROM {s.image} is not the pinned ARG" for s in dockerfile.stages if s.image != image]
    references: dict[str, set[str]] = {}
    for path in _text_files(repo):
        for found in _DIGEST_REFERENCE.findall(path.read_text(encoding="utf-8", errors="replace")):
            references.setdefault(found, set()).add(str(path.relative_to(repo)))
    others = {
        ref: files for ref, files in references.items() if ref != image and pinned and ref.startswith(pinned["name"])
    }
    problems += [f"{', '.join(sorted(files))} name(s) {ref}, not the Dockerfile's" for ref, files in others.items()]
    where = sorted(references.get(image, set()))
    details = [f"{image} named in: {', '.join(where)} (tests/unit/test_image_check.py holds them in step)"]
    return verdict(
        "base image pinned by digest, one digest everywhere",
        "ARG PYTHON_IMAGE parsed; every FROM uses it; every name:tag@sha256 in the repository compared",
        problems,
        details,
    )


def pull_check() -> Check:
    """The one promise about the base image only a registry can confirm."""
    reason = _registry_unreachable()
    detail = (
        f"no Docker engine here and the registry is unreachable ({reason}); a Debian bookworm root with its "
        "python3.11 stands in for the base image in the checks below"
        if reason
        else "the registry answers, but this check has no client for it: verify with `docker pull`"
    )
    return Check("the pinned digest exists and is python:3.11 (slim)", "needs `docker pull` of the digest",
                 "not checked", [detail])  # fmt: skip


def pip_line_check(dockerfile: Dockerfile) -> Check:
    """Every pip install in the build installs from a lock by hash, wheels only, or is
    the project itself without its dependencies."""
    problems: list[str] = []
    installs: list[str] = []
    for stage in dockerfile.stages:
        for run in stage.all("RUN"):
            for step in run.text.split("&&"):
                words = shlex.split(step)
                if "pip" not in " ".join(words[:1]) or "install" not in words:
                    continue
                installs.append(f"line {run.line}: {' '.join(words)}")
                if "-r" in words:
                    missing = {"--require-hashes", "--only-binary=:all:"} - set(words)
                    problems += [f"line {run.line}: `{' '.join(words)}` lacks {m}" for m in sorted(missing)]
                elif "--no-deps" not in words or "--no-build-isolation" not in words:
                    problems.append(f"line {run.line}: `{' '.join(words)}` installs beyond the locks")
    return verdict(
        "dependencies installed only from the hash-locked files, as wheels",
        "each `pip install` of the Dockerfile's RUN lines read",
        problems if installs else ["no pip install found in the Dockerfile"],
        installs,
    )


def _text_files(repo: Path) -> list[Path]:
    found: list[Path] = []
    for name in SEARCHED:
        top = repo / name
        candidates = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        found += [p for p in candidates if "__pycache__" not in p.parts and p.suffix not in (".pyc", ".png")]
    return found


def _registry_unreachable() -> str:
    """Why the registry cannot be reached ("" when it can), asked once with a short wait."""
    try:
        with socket.create_connection(REGISTRY, timeout=5):
            return ""
    except OSError as exc:
        return f"{REGISTRY[0]}: {exc.strerror or exc}"
