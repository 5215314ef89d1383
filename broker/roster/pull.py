"""One pull: fetch the roster, compare it with the policy's, check the policy it would make,
and write it only if all of that passes. The CLI and the running broker share it.

In order, each step able to refuse the whole pull: the source must read as a roster
(unreadable), every row must be well formed and the policy directory must let the pull
own its roster lines (refused), the pull must not empty the roster or remove more than
the allowed fraction of it (shrink), and the whole policy, with its own test cases, must
check (refused). Nothing is written before the last step passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from broker.policy.branch import BRANCHES_FILE, parse_branches
from broker.roster.candidate import check_candidate
from broker.roster.diff import RosterDiff, diff, roster_of_rows, roster_of_rules
from broker.roster.directory import DirectoryBusy, locked, read_current, replace_files
from broker.roster.render import render
from broker.roster.row import RosterProblem, SourceUnreadable
from broker.roster.source import RosterSource


class Outcome(Enum):
    APPLIED = "applied"
    """Written into the policy directory."""
    UNCHANGED = "unchanged"
    """The source says what the policy says: nothing written, no reload."""
    CHECKED = "checked"
    """A dry run that would have been applied."""
    REFUSED = "refused"
    """A bad row, a roster line the pull cannot own, or a policy that would not check."""
    UNREADABLE = "unreadable"
    """The source could not be read as a roster at all."""
    SHRINK = "shrink"
    """The pull would empty the roster, or remove more of it than allowed."""
    FAILED = "failed"
    """The policy directory could not be locked, read or written."""

    @property
    def succeeded(self) -> bool:
        return self in (Outcome.APPLIED, Outcome.UNCHANGED, Outcome.CHECKED)


@dataclass(frozen=True, slots=True)
class PullResult:
    outcome: Outcome
    source: str
    diff: RosterDiff | None = None
    problems: list[str] = field(default_factory=list)
    revision: str | None = None
    """The policy revision after the pull (applied) or that it would have (checked)."""


@dataclass(frozen=True, slots=True)
class PullOptions:
    max_removed_fraction: float = 0.1
    allow_shrink: bool = False
    dry_run: bool = False
    headquarters_branch: str = ""
    """The branch value read as branch-less: it must not also be a branch's code."""


def pull(source: RosterSource, directory: Path, options: PullOptions) -> PullResult:
    """Blocking (the source, the policy check, the writes): run it off the event loop."""
    try:
        with locked(directory):
            return _pull(source, directory, options)
    except DirectoryBusy as exc:
        return PullResult(Outcome.FAILED, source.name, problems=[str(exc)])
    except OSError as exc:  # a read-only mount, a missing directory: nothing was replaced
        return PullResult(Outcome.FAILED, source.name, problems=[f"{exc.filename or directory}: {exc.strerror}"])


def _pull(source: RosterSource, directory: Path, options: PullOptions) -> PullResult:
    try:
        fetched = source.fetch()
    except SourceUnreadable as exc:
        return PullResult(Outcome.UNREADABLE, source.name, problems=[str(exc.problem)])
    current = read_current(directory)
    current.problems += _headquarters_is_a_branch(directory, options.headquarters_branch)
    if fetched.problems or current.problems:  # no diff: one made without the bad rows would mislead
        return PullResult(Outcome.REFUSED, source.name, problems=[str(p) for p in fetched.problems + current.problems])
    change = diff(roster_of_rules(current.rules), roster_of_rows(fetched.rows))
    shrink = _shrink_problem(source.name, change, options)
    if shrink is not None:
        return PullResult(Outcome.SHRINK, source.name, change, [str(shrink)])
    rendered = render(fetched.rows, source.name, current.shifts_kept)
    if all(current.files.get(name) == data for name, data in rendered.files.items()):
        return PullResult(Outcome.UNCHANGED, source.name, change)  # checked when it was written
    revision, problems = check_candidate(directory, rendered)
    if problems:
        return PullResult(Outcome.REFUSED, source.name, change, problems)
    if options.dry_run:
        return PullResult(Outcome.CHECKED, source.name, change, revision=revision)
    replace_files(directory, rendered.files)
    return PullResult(Outcome.APPLIED, source.name, change, revision=revision)


def _shrink_problem(source: str, change: RosterDiff, options: PullOptions) -> RosterProblem | None:
    if change.after == 0:
        return RosterProblem(
            source,
            "the source holds no employees: a pull never empties the roster (--allow-shrink included)",
            "check the export or the query; to close the doors to everyone, use deny lines",
        )
    if options.allow_shrink or change.removed_fraction <= options.max_removed_fraction:
        return None
    return RosterProblem(
        source,
        f"the pull would remove {len(change.removed)} of {change.before} employees "
        f"({change.removed_fraction:.0%}, more than the {options.max_removed_fraction:.0%} allowed)",
        "if HR really removed them, pull again with --allow-shrink; else the export or query lost rows",
    )


def _headquarters_is_a_branch(directory: Path, headquarters: str) -> list[RosterProblem]:
    """A branch coded like the headquarters value would have its staff read as branch-less,
    every branch theirs."""
    path = directory / BRANCHES_FILE
    try:
        branches, _ = parse_branches(BRANCHES_FILE, path.read_bytes())
    except OSError:
        return []  # the policy check names a missing branches.csv
    if headquarters not in branches:
        return []
    return [
        RosterProblem(
            str(path),
            f"[roster] headquarters_branch {headquarters!r} is also a branch code: its staff would hold every branch",
            "set [roster] headquarters_branch to a value no branch uses",
        )
    ]
