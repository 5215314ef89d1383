"""A pulled roster as policy lines: roster.csv written whole, and the g2 lines of
shifts.csv replaced while its shift templates and comments stay as they are.

Lines are sorted so that a pull that changes nothing writes the same bytes (no reload),
and one that changes a little shows as a small diff in review. Each line remembers the
source row it came from, so a problem the policy check finds in it is reported there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from broker.roster.row import RosterRow

ROSTER_FILE = "roster.csv"
SHIFTS_FILE = "shifts.csv"
ROSTER_LINE_TYPES = frozenset({"g", "g2", "g3"})
"""The lines a pull owns: whoever holds which role where, and which shifts."""


@dataclass(slots=True)
class RenderedRoster:
    files: dict[str, bytes] = field(default_factory=dict)
    origin: dict[tuple[str, int], str] = field(default_factory=dict)
    """(file, line) -> the source row the line came from (the first, when several did)."""
    kept: dict[int, int] = field(default_factory=dict)
    """A line of the new shifts.csv kept from the old -> its number in the old file."""


def render(rows: list[RosterRow], source: str, shifts_kept: list[tuple[int, str]]) -> RenderedRoster:
    """`shifts_kept`: shifts.csv's lines that are not roster lines (templates, comments),
    with their line numbers there."""
    rendered = RenderedRoster()
    roster = [f"# The roster, pulled from {source} by `broker roster pull`: change it there, not here.", ""]
    roster.append("# Who holds which role in which branch: g, employee, role, branch")
    in_branches = [r for r in rows if r.branch is not None]
    _lines(rendered, roster, ROSTER_FILE, "g", _first(in_branches, lambda r: (r.employee, r.role, r.branch or "")))
    branchless = _first([r for r in rows if r.branch is None], lambda r: (r.employee, r.role))
    if branchless:
        roster += ["", "# Branch-less roles for headquarters: g3, employee, role"]
        _lines(rendered, roster, ROSTER_FILE, "g3", branchless)
    kept = _without_trailing_blanks(shifts_kept)
    shifts = [line for _, line in kept]
    rendered.kept = {new: old for new, (old, _) in enumerate(kept, start=1)}
    if not shifts or not shifts[-1].lstrip().startswith("#"):
        shifts += ["", f"# Who works which shift, pulled from {source}: g2, employee, shift"]
    _lines(rendered, shifts, SHIFTS_FILE, "g2", _first(rows, lambda r: (r.employee, r.shift)))
    rendered.files[ROSTER_FILE] = _text(roster)
    rendered.files[SHIFTS_FILE] = _text(shifts)
    return rendered


def _first(rows: list[RosterRow], key: Callable[[RosterRow], tuple[str, ...]]) -> dict[tuple[str, ...], RosterRow]:
    """Each fact with the first row that states it (an employee's g line comes from every
    row naming one of their shifts)."""
    found: dict[tuple[str, ...], RosterRow] = {}
    for row in rows:
        found.setdefault(key(row), row)
    return found


def _lines(
    rendered: RenderedRoster, lines: list[str], file: str, ptype: str, facts: dict[tuple[str, ...], RosterRow]
) -> None:
    """Append one policy line per fact, sorted, remembering the source row of each."""
    for fact in sorted(facts):
        lines.append(", ".join((ptype, *fact)))
        rendered.origin[(file, len(lines))] = facts[fact].where


def _without_trailing_blanks(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    kept = list(lines)
    while kept and not kept[-1][1].strip():
        kept.pop()
    return kept


def _text(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode()
