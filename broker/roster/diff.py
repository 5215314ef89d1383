"""What a pull would change, per employee: who is added, who removed, whose roles,
branches or shifts change. Shown before anything is written, and the measure the shrink
guard reads."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from broker.policy.rule import Rule
from broker.roster.row import RosterRow


class Standing(NamedTuple):
    """One employee on a roster: roles where held (None: every branch, shown as @*), and
    shifts. A tuple, not a dataclass: a roster of 100,000 builds two of these each."""

    roles: frozenset[tuple[str, str | None]]
    shifts: frozenset[str]

    def held(self) -> str:
        return " ".join(f"{role}@{branch or '*'}" for role, branch in sorted(self.roles, key=_role_order)) or "none"

    def worked(self) -> str:
        return " ".join(sorted(self.shifts)) or "none"

    def change_to(self, new: Standing) -> str:
        """What differs, for people: "roles courier@BR001 -> courier@BR002; shifts ..."."""
        parts = [f"roles {self.held()} -> {new.held()}"] if self.roles != new.roles else []
        if self.shifts != new.shifts:
            parts.append(f"shifts {self.worked()} -> {new.worked()}")
        return "; ".join(parts)


Roster = dict[str, Standing]


def roster_of_rules(rules: Iterable[Rule]) -> Roster:
    """The roster the policy holds now: its g, g3 and g2 lines."""
    roles: dict[str, set[tuple[str, str | None]]] = {}
    shifts: dict[str, set[str]] = {}
    for rule in rules:
        if rule.ptype == "g":
            roles.setdefault(rule.fields[0], set()).add((rule.fields[1], rule.fields[2]))
        elif rule.ptype == "g3":
            roles.setdefault(rule.fields[0], set()).add((rule.fields[1], None))
        elif rule.ptype == "g2":
            shifts.setdefault(rule.fields[0], set()).add(rule.fields[1])
    return _standings(roles, shifts)


def roster_of_rows(rows: Iterable[RosterRow]) -> Roster:
    roles: dict[str, set[tuple[str, str | None]]] = {}
    shifts: dict[str, set[str]] = {}
    for row in rows:
        roles.setdefault(row.employee, set()).add((row.role, row.branch))
        shifts.setdefault(row.employee, set()).add(row.shift)
    return _standings(roles, shifts)


def _standings(roles: dict[str, set[tuple[str, str | None]]], shifts: dict[str, set[str]]) -> Roster:
    standings = {e: Standing(frozenset(held), frozenset(shifts.get(e, ()))) for e, held in roles.items()}
    for employee in shifts.keys() - standings.keys():  # a shift and no role: still on the roster
        standings[employee] = Standing(frozenset(), frozenset(shifts[employee]))
    return standings


def _role_order(held: tuple[str, str | None]) -> tuple[str, str]:
    return held[0], held[1] or ""


@dataclass(frozen=True, slots=True)
class RosterDiff:
    before: int
    after: int
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[tuple[str, Standing, Standing]] = field(default_factory=list)

    @property
    def removed_fraction(self) -> float:
        return len(self.removed) / self.before if self.before else 0.0

    def summary(self) -> dict[str, int]:
        return {"before": self.before, "after": self.after, **self.counts()}

    def counts(self) -> dict[str, int]:
        return {"added": len(self.added), "removed": len(self.removed), "changed": len(self.changed)}

    def lines(self, show: int) -> list[str]:
        """For people: a count per kind of change, then up to `show` employees of each."""
        found = [f"  added {len(self.added)}{_some(self.added, show)}"]
        found.append(f"  removed {len(self.removed)}{_some(self.removed, show)}")
        found.append(f"  changed {len(self.changed)}" + (":" if self.changed and show else ""))
        found += [f"    {employee}: {old.change_to(new)}" for employee, old, new in self.changed[:show]]
        if len(self.changed) > show:
            found.append(f"    ... and {len(self.changed) - show} more")
        return found


def diff(before: Roster, after: Roster) -> RosterDiff:
    changed = [(e, before[e], after[e]) for e in sorted(before.keys() & after.keys()) if before[e] != after[e]]
    return RosterDiff(
        len(before), len(after), sorted(after.keys() - before.keys()), sorted(before.keys() - after.keys()), changed
    )


def _some(employees: list[str], show: int) -> str:
    if not employees or not show:
        return ""
    more = f" and {len(employees) - show} more" if len(employees) > show else ""
    return ": " + ", ".join(employees[:show]) + more
