"""Warnings for a policy that loads but is probably not what its authors meant.

Problems refuse a policy; these do not. `broker check` prints them with file, line and
a hint, and `--strict` turns them into failures for CI.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from itertools import combinations

from broker.messages.parse import MESSAGES_FILE
from broker.policy.problem import PolicyProblem
from broker.policy.route import Route, RouteMap
from broker.policy.rule import Rule
from broker.policy.shift import Shift
from broker.policy.snapshot import PolicySnapshot

SAMPLE_STEP = 15 * 60
A_MONDAY = datetime(2026, 11, 30).timestamp()


def lint(snapshot: PolicySnapshot) -> list[PolicyProblem]:
    rules = snapshot.rules()
    return [
        *_overlapping_shifts(rules, snapshot),
        *_roles_nobody_holds(rules),
        *_routes_that_never_match(snapshot.routes),
        *_roles_without_probe_budget(rules, snapshot.routes),
        *_no_help_desk_contact(snapshot),
    ]


def _no_help_desk_contact(snapshot: PolicySnapshot) -> list[PolicyProblem]:
    """Every refusal is meant to say how to reach the help desk; without a contact it
    can only say what went wrong."""
    if snapshot.messages.help is not None:
        return []
    return [
        PolicyProblem(
            MESSAGES_FILE,
            1,
            "no help desk contact: refusals do not say how to reach the help desk",
            'add [contact] with phone, email or url to messages.toml (e.g. phone = "400-800-1234")',
        )
    ]


def _roles_without_probe_budget(rules: list[Rule], routes: RouteMap) -> list[PolicyProblem]:
    """A role that reads through a route returning records, with no `p5` line, may ask
    the service yes/no questions (whose waybill is this? how many match this phone?) as
    often as its rate allows: each refusal costs records quota but nothing caps them."""
    budgeted = {r.fields[0] for r in rules if r.ptype == "p5"}
    served = {(route.resource, route.action) for route in routes.routes if route.records != "none" or route.owner}
    found = []
    for rule in rules:
        role = rule.fields[0]
        if rule.ptype != "p" or role in budgeted or (rule.fields[1], rule.fields[2]) not in served:
            continue
        budgeted.add(role)  # one warning per role
        found.append(
            PolicyProblem(
                rule.file,
                rule.line,
                f"role {role} reads records over HTTP but has no probe budget",
                f"add e.g. p5, {role}, 30, shift to limits.csv (refusals after the service answered, per window)",
            )
        )
    return found


def _overlapping_shifts(rules: list[Rule], snapshot: PolicySnapshot) -> list[PolicyProblem]:
    shifts = {s.name: s for profile in snapshot.index.employees.profiles for s in profile.shifts}
    overlapping = {frozenset(pair) for pair in combinations(sorted(shifts), 2) if _overlap(*(shifts[n] for n in pair))}
    assigned: defaultdict[str, list[Rule]] = defaultdict(list)
    for rule in rules:
        if rule.ptype == "g2":
            assigned[rule.fields[0]].append(rule)
    found = []
    for employee, lines in sorted(assigned.items()):
        for first, second in combinations(lines, 2):
            if frozenset((first.fields[1], second.fields[1])) in overlapping:
                found.append(
                    PolicyProblem(
                        second.file,
                        second.line,
                        f"employee {employee}'s shifts {first.fields[1]} and {second.fields[1]} overlap",
                        f"see {first.where}; overlapping shifts make per-shift quotas start at the earlier one",
                    )
                )
    return found


def _overlap(a: Shift, b: Shift) -> bool:
    """Whether two shifts are ever on at once, sampled every 15 minutes over a week."""
    week = range(int(A_MONDAY), int(A_MONDAY) + 8 * 86_400, SAMPLE_STEP)
    return any(a.occurrence_at(t) and b.occurrence_at(t) for t in week)


def _roles_nobody_holds(rules: list[Rule]) -> list[PolicyProblem]:
    held = {r.fields[1] for r in rules if r.ptype in ("g", "g3")}
    seen: set[str] = set()
    found = []
    for rule in rules:
        role = rule.fields[0]
        if rule.ptype == "p" and role not in held and role not in seen:
            seen.add(role)
            found.append(
                PolicyProblem(rule.file, rule.line, f"no employee holds role {role!r}: its rules are unreachable")
            )
    return found


def _routes_that_never_match(routes: RouteMap) -> list[PolicyProblem]:
    found = []
    for position, route in enumerate(routes.routes):
        for earlier in routes.routes[:position]:
            if _covers(earlier, route, routes.case_sensitive):
                found.append(
                    PolicyProblem(
                        routes.file,
                        route.line,
                        f"route {route.label} can never match: {earlier.label} (line {earlier.line}) matches first",
                        "the first matching route wins; move the more specific route above",
                    )
                )
                break
    return found


def _covers(earlier: Route, later: Route, case_sensitive: bool) -> bool:
    if not later.methods <= earlier.methods or len(earlier.segments) != len(later.segments):
        return False
    for mine, theirs in zip(earlier.segments, later.segments, strict=True):
        if mine.startswith("{"):
            continue
        if theirs.startswith("{") or (mine != theirs if case_sensitive else mine.lower() != theirs.lower()):
            return False
    return True
