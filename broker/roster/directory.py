"""The policy directory as a pull sees it: the roster it holds now, whether a pull may own
its roster lines, and replacing the two files so a reader never sees half of one.

A pull rewrites roster.csv whole and the roster lines of shifts.csv. Anything it would
silently drop (a p line kept in roster.csv) or leave to contradict it (a g line in
another file) is refused instead, naming the line.
"""

from __future__ import annotations

import codecs
import contextlib
import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from broker.policy.branch import BRANCHES_FILE
from broker.policy.problem import PolicyProblem
from broker.policy.rule import Rule, parse_rules
from broker.roster.render import ROSTER_FILE, ROSTER_LINE_TYPES, SHIFTS_FILE
from broker.roster.row import RosterProblem

LOCK_WAIT_SECONDS = 10.0
LOCK_POLL_SECONDS = 0.05
"""Polled, not a timed wait: timed waits misbehave under a moved clock (libfaketime)."""


class DirectoryBusy(Exception):
    """Another pull holds the policy directory."""


@dataclass(slots=True)
class CurrentRoster:
    rules: list[Rule] = field(default_factory=list)
    """Every roster line (g, g2, g3) the policy's rule files hold now."""
    files: dict[str, bytes | None] = field(default_factory=dict)
    """roster.csv and shifts.csv as they are (None: absent)."""
    shifts_kept: list[tuple[int, str]] = field(default_factory=list)
    """shifts.csv's lines that are not roster lines, with their numbers: what a pull keeps."""
    problems: list[RosterProblem] = field(default_factory=list)


def read_current(directory: Path) -> CurrentRoster:
    current = CurrentRoster(files={ROSTER_FILE: None, SHIFTS_FILE: None})
    for path in sorted(directory.glob("*.csv")):
        if path.name == BRANCHES_FILE:
            continue
        try:
            raw = path.read_bytes()
        except OSError as exc:
            current.problems.append(RosterProblem(str(path), f"cannot read: {exc.strerror}"))
            continue
        rules, broken = parse_rules(path.name, raw)
        current.rules += [r for r in rules if r.ptype in ROSTER_LINE_TYPES]
        if path.name in (ROSTER_FILE, SHIFTS_FILE):
            current.files[path.name] = raw
            unreadable = _unreadable_as_text(path, raw)
            if unreadable:
                current.problems += unreadable
                continue
        if path.name == ROSTER_FILE:
            current.problems += _lines_a_rewrite_would_lose(path, rules, broken)
        elif path.name == SHIFTS_FILE:
            owned = {r.line for r in rules if r.ptype in ROSTER_LINE_TYPES} | {p.line for p in broken if _roster(p)}
            lines = raw.decode("utf-8", errors="replace").split("\n")
            current.shifts_kept = [(n, line) for n, line in enumerate(lines, start=1) if n not in owned]
        else:
            current.problems += _roster_lines_elsewhere(path, rules)
    return current


def _roster(problem: PolicyProblem) -> bool:
    """Whether a line the reader refused was meant as a roster line (a pull replaces it)."""
    return bool(problem.about) and problem.about[0] in ROSTER_LINE_TYPES


def _unreadable_as_text(path: Path, raw: bytes) -> list[RosterProblem]:
    """A file the reader cannot split into lines cannot be split into the pull's and the rest."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return [RosterProblem(str(path), "not valid UTF-8: a pull cannot tell its lines from the rest")]
    if raw.startswith(codecs.BOM_UTF8):
        return [RosterProblem(f"{path}:1", "starts with a UTF-8 byte order mark", "save it without one first")]
    return []


def _lines_a_rewrite_would_lose(path: Path, rules: list[Rule], broken: list[PolicyProblem]) -> list[RosterProblem]:
    hint = "move it to another file (roles.csv, limits.csv, deny.csv, ...), or delete it"
    lost = [(r.line, f"a {r.ptype} line") for r in rules if r.ptype not in ROSTER_LINE_TYPES]
    parsed = {r.line for r in rules}  # a line can be read and still have a problem (the last, unterminated)
    lost += [
        (p.line, "a line that does not read as a roster line")
        for p in broken
        if p.line and p.line not in parsed and not _roster(p)
    ]
    return [
        RosterProblem(f"{path}:{line}", f"{what} in {ROSTER_FILE}, which a pull rewrites whole: it would be lost", hint)
        for line, what in sorted(lost)
    ]


def _roster_lines_elsewhere(path: Path, rules: list[Rule]) -> list[RosterProblem]:
    return [
        RosterProblem(
            f"{path}:{r.line}",
            f"a roster line ({r.ptype}) outside {ROSTER_FILE} and {SHIFTS_FILE}: a pull would not replace it",
            "the roster comes from HR now: add the employee there, and delete this line",
        )
        for r in rules
        if r.ptype in ROSTER_LINE_TYPES
    ]


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """One pull at a time per policy directory (the CLI's and the running broker's): an
    advisory lock on the directory itself, so no lock file appears among the policy's."""
    handle = os.open(directory, os.O_RDONLY)
    try:
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise DirectoryBusy(
                        f"another roster pull has held {directory} for {LOCK_WAIT_SECONDS:g} s"
                    ) from None
                time.sleep(LOCK_POLL_SECONDS)
        yield
    finally:
        os.close(handle)  # closing releases the lock


def replace_files(directory: Path, files: dict[str, bytes]) -> None:
    """Write each file beside its target and rename it over the target: a reader (the
    running broker's reload) sees the old file or the new one, never a part. The renames
    follow each other within microseconds; the broker's watcher waits 300 ms for a burst
    of changes to end, so it reloads once, on both."""
    staged: dict[str, str] = {}
    try:
        for name, data in files.items():
            staged[name] = _staged(directory, name, data)
        for name, temporary in staged.items():
            os.replace(temporary, directory / name)
        _sync_directory(directory)
    finally:
        for temporary in staged.values():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)


def _staged(directory: Path, name: str, data: bytes) -> str:
    """A durable copy of `data` beside `name`, with its mode. The name does not end in
    .csv, so a reload meanwhile does not read it as a rule file."""
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".pulling")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fchmod(file.fileno(), _mode_of(directory / name))
            os.fsync(file.fileno())
    except BaseException:
        os.unlink(temporary)
        raise
    return temporary


def _mode_of(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        return 0o644


def _sync_directory(directory: Path) -> None:
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)
