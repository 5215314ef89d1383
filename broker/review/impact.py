"""What a replay found: flips grouped by employee, branch, route and reason, and reports."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

TOP = 10
"""Rows per table in the text report."""
GROUPS = ("employee", "branch", "route", "reason")


@dataclass(frozen=True, slots=True)
class Example:
    time: str
    """The decision's time, in the employee's time zone when the new roster knows them."""
    employee: str
    request: str
    old_verdict: str
    old_reason: str
    new_verdict: str
    new_reason: str
    new_detail: str
    line: int

    def as_text(self) -> str:
        change = f"{self.old_verdict} ({self.old_reason}) → {self.new_verdict} ({self.new_reason})"
        return f"{self.time}  {self.employee}  {self.request}  [audit line {self.line}]\n    {change}" + (
            f": {self.new_detail}" if self.new_detail else ""
        )


@dataclass(slots=True)
class Group:
    """Flips sharing one key (an employee, a branch, a route or a new reason)."""

    key: str
    allow_to_deny: int = 0
    deny_to_allow: int = 0
    examples: list[Example] = field(default_factory=list)

    @property
    def flips(self) -> int:
        return self.allow_to_deny + self.deny_to_allow


@dataclass(slots=True)
class Impact:
    policy_revision: str
    """The revision the log was replayed under."""
    total: int = 0
    """Decisions replayed (flipped, unchanged or with another reason)."""
    unchanged: int = 0
    reason_changed: int = 0
    allow_to_deny: int = 0
    deny_to_allow: int = 0
    not_replayed: Counter[str] = field(default_factory=Counter)
    """Original reason -> decisions not replayed (no policy decision was made then)."""
    recorded_revisions: Counter[str] = field(default_factory=Counter)
    """Policy revision -> decisions recorded under it."""
    reason_changes: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(old verdict and reason, new verdict and reason) -> decisions keeping their verdict."""
    groups: dict[str, dict[str, Group]] = field(default_factory=lambda: {name: {} for name in GROUPS})
    """Group name (GROUPS) -> key -> flips under that key."""

    @property
    def flips(self) -> int:
        return self.allow_to_deny + self.deny_to_allow

    def top(self, group: str, count: int = TOP) -> list[Group]:
        """The keys of `group` with the most flips first (ties by key)."""
        return sorted(self.groups[group].values(), key=lambda g: (-g.flips, g.key))[:count]


def headline(impact: Impact) -> str:
    verb = "flips" if impact.flips == 1 else "flip"
    return (
        f"{impact.total:,} decisions replayed: {impact.flips:,} {verb} "
        f"({impact.allow_to_deny:,} allow→deny, {impact.deny_to_allow:,} deny→allow)"
    )


def impact_text(impact: Impact, *, examples: int = 3) -> str:
    """A report for a person reading CI logs: the headline, the flips per employee,
    branch, route and new reason (top 10 each), then examples per new reason."""
    lines = [headline(impact), f"  replayed under policy {impact.policy_revision}"]
    lines.append(f"  {impact.unchanged:,} unchanged, {impact.reason_changed:,} keep their verdict with another reason")
    if impact.not_replayed:
        why = ", ".join(f"{reason} {count:,}" for reason, count in sorted(impact.not_replayed.items()))
        lines.append(f"  {sum(impact.not_replayed.values()):,} not replayed, no policy decision was made then ({why})")
    if impact.recorded_revisions:
        seen = ", ".join(f"{rev} ({count:,})" for rev, count in impact.recorded_revisions.most_common())
        lines.append(f"  recorded under policy {seen}")
    if impact.flips:
        for name in GROUPS:
            lines += ["", *_table(impact, name)]
    if impact.reason_changes:
        lines += ["", "same verdict, another reason"]
        changes = impact.reason_changes.most_common(TOP)
        width = max(len(f"{old} → {new}") for (old, new), _ in changes)
        lines += [f"  {f'{old} → {new}'.ljust(width)}  {count:>6,}" for (old, new), count in changes]
        if len(impact.reason_changes) > TOP:
            lines.append(f"  … and {len(impact.reason_changes) - TOP} more")
    if impact.flips and examples > 0:
        lines += ["", f"examples (up to {examples} per new reason)"]
        for group in impact.top("reason"):
            lines.append(f"  {group.key}")
            lines += ["    " + e.as_text().replace("\n", "\n    ") for e in group.examples[:examples]]
    return "\n".join(lines) + "\n"


def _table(impact: Impact, name: str) -> list[str]:
    rows = impact.top(name)
    title = f"by {name}"
    width = max([len(title), *(len(g.key) + 2 for g in rows)])
    lines = [f"{title.ljust(width)}  allow→deny  deny→allow"]
    lines += [f"{('  ' + g.key).ljust(width)}  {g.allow_to_deny:>10,}  {g.deny_to_allow:>10,}" for g in rows]
    rest = len(impact.groups[name]) - len(rows)
    if rest > 0:
        lines.append(f"  … and {rest} more")
    return lines


def impact_json(impact: Impact) -> dict[str, Any]:
    """The whole impact for tools: totals, every group key with its examples."""
    return {
        "policy_revision": impact.policy_revision,
        "total": impact.total,
        "unchanged": impact.unchanged,
        "reason_changed": impact.reason_changed,
        "flips": impact.flips,
        "allow_to_deny": impact.allow_to_deny,
        "deny_to_allow": impact.deny_to_allow,
        "not_replayed": dict(sorted(impact.not_replayed.items())),
        "recorded_revisions": dict(impact.recorded_revisions.most_common()),
        "reason_changes": [
            {"old": old, "new": new, "count": count} for (old, new), count in impact.reason_changes.most_common()
        ],
        "groups": {
            name: [
                {
                    "key": g.key,
                    "flips": g.flips,
                    "allow_to_deny": g.allow_to_deny,
                    "deny_to_allow": g.deny_to_allow,
                    "examples": [dataclasses.asdict(e) for e in g.examples],
                }
                for g in impact.top(name, len(impact.groups[name]))
            ]
            for name in GROUPS
        },
    }
