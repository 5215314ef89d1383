"""The build context as Docker sends it: the checkout minus what .dockerignore excludes.

Only the subset of .dockerignore this repository uses is understood (`*`, `?`, `**`
for any number of directories, a leading `/`); an exception line (`!pattern`) is an
error, so a .dockerignore the check would read differently from Docker fails loudly.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path


class ContextError(ValueError):
    """A COPY source or .dockerignore line the check cannot honour as Docker would."""


def ignore_patterns(context: Path) -> list[re.Pattern[str]]:
    path = context / ".dockerignore"
    if not path.is_file():
        return []
    patterns = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("!"):
            raise ContextError(f"{path}:{number}: exception lines (!) are not supported by the image check")
        patterns.append(re.compile(_regex(line.strip("/"))))
    return patterns


def _regex(pattern: str) -> str:
    out = []
    parts = pattern.split("/")
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        if part == "**":
            out.append(".*" if last else "(?:.*/)?")
            continue
        piece = "".join("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c) for c in part)
        out.append(piece if last else piece + "/")
    return "".join(out) + "$"


def ignored(relative: str, patterns: list[re.Pattern[str]]) -> bool:
    """Whether `relative` (or a directory above it) matches a pattern."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    return any(p.match(prefix) for p in patterns for prefix in prefixes)


def copy_in(context: Path, source: str, target: Path, patterns: list[re.Pattern[str]]) -> None:
    """COPY `source` (relative to the context) to `target`: a directory's contents go
    into `target`, a file becomes `target`; ignored paths are left out. Modes are kept;
    the copies are owned by whoever runs this (root, as Docker's COPY makes them)."""
    origin = (context / source).resolve()
    if not origin.is_relative_to(context.resolve()) or ignored(source.strip("/"), patterns):
        raise ContextError(f"COPY {source}: not in the build context")
    if origin.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(origin, target)
        return
    if not origin.is_dir():
        raise ContextError(f"COPY {source}: no such file or directory in {context}")
    for path in sorted(origin.rglob("*")):
        relative = path.relative_to(context).as_posix()
        if ignored(relative, patterns):
            continue
        destination = target / path.relative_to(origin)
        if path.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
        else:
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, destination)
