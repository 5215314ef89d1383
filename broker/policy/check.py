"""Cross-checks between policy lines: the mistakes a line-by-line reader cannot see."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from broker.policy.branch import Branch, unknown_branch
from broker.policy.limit import (
    ProbeLimit,
    RateLimit,
    RecordLimit,
    build_probe_limit,
    build_rate_limit,
    build_record_limit,
)
from broker.policy.problem import PolicyProblem
from broker.policy.record_scan import example_problem
from broker.policy.route import RouteMap
from broker.policy.rule import WILDCARD, Rule
from broker.policy.shift import Shift, build_shift
from broker.policy.table import TableMap

K = TypeVar("K")
V = TypeVar("V")


@dataclass(slots=True)
class CheckedRules:
    by_type: dict[str, list[Rule]]
    shifts: dict[str, Shift] = field(default_factory=dict)
    record_limits: dict[tuple[str, str], RecordLimit] = field(default_factory=dict)
    rate_limits: dict[str, RateLimit] = field(default_factory=dict)
    probe_limits: dict[str, ProbeLimit] = field(default_factory=dict)
    problems: list[PolicyProblem] = field(default_factory=list)
    broken: set[tuple[str, ...]] = field(default_factory=set)
    """(ptype, first fields) of lines that parsed but could not be built."""
    denies: list[Rule] = field(default_factory=list)
    """p lines with effect deny; `of("p")` holds the allow lines only."""

    def of(self, ptype: str) -> list[Rule]:
        return self.by_type.get(ptype, [])


def check_rules(
    rules: list[Rule], broken: frozenset[tuple[str, ...]] = frozenset(), several_branches: bool = False
) -> CheckedRules:
    """`broken`: what lines refused by the reader were about (("p3", role, resource), ...),
    so their absence is not reported a second time as an unrelated problem.
    `several_branches`: whether an employee may hold roles in more than one branch."""
    checked = CheckedRules({})
    for rule in rules:
        if rule.effect == "deny":
            checked.denies.append(rule)
        else:
            checked.by_type.setdefault(rule.ptype, []).append(rule)
    _check_duplicates(checked, rules)
    checked.shifts = _build_named(checked, "p2", lambda r: r.fields[0], lambda r: build_shift(*r.fields[:5]))
    checked.record_limits = _build_named(
        checked,
        "p3",
        lambda r: (r.fields[0], r.fields[1]),
        lambda r: build_record_limit(r.fields[2], r.fields[3], r.fields[4], rule=_cite(r)),
    )
    checked.rate_limits = _build_named(
        checked, "p4", lambda r: r.fields[0], lambda r: build_rate_limit(r.fields[1], r.fields[2], rule=_cite(r))
    )
    checked.probe_limits = _build_named(
        checked, "p5", lambda r: r.fields[0], lambda r: build_probe_limit(r.fields[1], r.fields[2], rule=_cite(r))
    )
    _check_caps_within_quotas(checked)
    _check_references(checked, broken)
    _check_shifts_held(checked)
    if not several_branches:
        _check_one_branch_each(checked)
    _check_allow_templates(checked)
    check_denies(checked)
    return checked


def check_routes(checked: CheckedRules, routes: RouteMap) -> None:
    granted = {(r.fields[1], r.fields[2]) for r in checked.of("p")}
    for route in routes.routes:
        if (route.resource, route.action) not in granted:
            checked.problems.append(
                PolicyProblem(
                    routes.file,
                    route.line,
                    f"route {route.label} uses {route.resource}/{route.action}, which no p line grants",
                    "fix the spelling, or add a p line granting it to a role",
                )
            )
        if route.action != "read" and not route.branch_from and not route.owner:
            checked.problems.append(
                PolicyProblem(
                    routes.file,
                    route.line,
                    f"route {route.label} lets employees {route.action} records but says no way to know whose",
                    "name where the request carries the branch (branch = path:NAME, query:NAME or body:FIELD), "
                    "or how to look the record up (owner = the GET path of the record)",
                )
            )
        if route.records != "none" and not route.branch_field:
            checked.problems.append(
                PolicyProblem(
                    routes.file,
                    route.line,
                    f"route {route.label} returns records but names no branch_field",
                    "set branch_field to the record field holding its branch, so the broker can check it",
                )
            )


def check_examples(checked: CheckedRules, routes: RouteMap) -> None:
    """Each route's example answer, read as the HTTP door reads a real one."""
    for route in routes.routes:
        if route.example and (route.branch_field or route.records == "none"):  # else reported already
            problem = example_problem(route, routes.branch_paths)
            if problem:
                checked.problems.append(
                    PolicyProblem(
                        routes.file,
                        route.line,
                        f"route {route.label}: its example answer {problem}",
                        "fix response_items / branch_field (dotted paths, e.g. result.records, org.branch_code), "
                        "or the example, so they describe the API's real answers",
                    )
                )


def check_tables(checked: CheckedRules, tables: TableMap) -> None:
    """Every mapped table's resource must be one the rules grant, or the table is a
    silent dead end (every statement on it refused with a misleading reason)."""
    granted = {r.fields[1] for r in checked.of("p")}
    for rule in tables.tables.values():
        if rule.resource not in granted:
            checked.problems.append(
                PolicyProblem(
                    tables.file,
                    0,
                    f"table {rule.name} maps to resource {rule.resource}, which no p line grants",
                    "fix the spelling, or add a p line granting it to a role",
                )
            )


def _cite(rule: Rule) -> str:
    return f"{rule} ({rule.where})"


def _check_duplicates(checked: CheckedRules, rules: list[Rule]) -> None:
    seen: dict[tuple[str, tuple[str, ...]], Rule] = {}
    for rule in rules:
        first = seen.setdefault((rule.ptype, rule.fields), rule)
        if first is not rule:
            checked.problems.append(PolicyProblem(rule.file, rule.line, f"duplicate of {first.where}"))


def _build_named(checked: CheckedRules, ptype: str, key: Callable[[Rule], K], build: Callable[[Rule], V]) -> dict[K, V]:
    built: dict[K, V] = {}
    where: dict[K, Rule] = {}
    for rule in checked.of(ptype):
        name = key(rule)
        if name in where:
            checked.problems.append(
                PolicyProblem(rule.file, rule.line, f"{ptype} for {name} is already defined at {where[name].where}")
            )
            continue
        try:
            built[name] = build(rule)
            where[name] = rule
        except ValueError as exc:
            checked.problems.append(PolicyProblem(rule.file, rule.line, str(exc)))
            checked.broken.add((ptype, *rule.fields[:2]))
    return built


def _check_caps_within_quotas(checked: CheckedRules) -> None:
    """A cap above the quota promises requests the quota can never serve in full."""
    for rule in checked.of("p3"):
        limit = checked.record_limits.get((rule.fields[0], rule.fields[1]))
        if limit is not None and limit.cap is not None and limit.quota is not None and limit.cap > limit.quota:
            checked.problems.append(
                PolicyProblem(
                    rule.file,
                    rule.line,
                    f"cap {limit.cap} is above the quota {limit.quota}: no request could take its cap",
                    "lower the cap or raise the quota",
                )
            )


def _check_shifts_held(checked: CheckedRules) -> None:
    """An employee on the roster without a shift could never work: a forgotten g2 line,
    which used to load silently and refuse them all day."""
    with_shift = {r.fields[0] for r in checked.of("g2")}
    reported: set[str] = set()
    hint = f"add g2, <employee>, <shift> (defined: {', '.join(sorted(checked.shifts)) or 'none'}); "
    for rule in checked.of("g") + checked.of("g3"):
        employee = rule.fields[0]
        if employee not in with_shift and employee not in reported:
            reported.add(employee)
            checked.problems.append(
                PolicyProblem(
                    rule.file,
                    rule.line,
                    f"employee {employee} has no shift",
                    hint + "staff who may work any hour get the 'always' shift",
                )
            )


def _check_one_branch_each(checked: CheckedRules) -> None:
    first: dict[str, Rule] = {}
    for rule in checked.of("g"):
        employee, _, branch = rule.fields
        seen = first.setdefault(employee, rule)
        if seen.fields[2] != branch:
            checked.problems.append(
                PolicyProblem(
                    rule.file,
                    rule.line,
                    f"employee {employee} holds roles in {seen.fields[2]} ({seen.where}) and {branch}",
                    "a stale roster line lets them into another branch; remove it, or allow regional staff "
                    "with several_branches = true under [roster] in policy.toml",
                )
            )


def _check_references(checked: CheckedRules, broken: frozenset[tuple[str, ...]] = frozenset()) -> None:
    roles = {r.fields[0] for r in checked.of("p")}
    role_hint = f"known roles: {', '.join(sorted(roles)) or 'none (no p lines)'}"
    for rule in checked.of("g") + checked.of("g3"):
        _require(checked, rule, rule.fields[1] in roles, f"unknown role {rule.fields[1]!r}", role_hint)
        _require(
            checked,
            rule,
            rule.fields[0] not in roles,
            f"employee id {rule.fields[0]!r} is also a role name",
            "Casbin keeps employees and roles in one graph: the employee would inherit that role; rename one",
        )
    for rule in checked.of("p3") + checked.of("p4") + checked.of("p5"):
        _require(checked, rule, rule.fields[0] in roles, f"limit for unknown role {rule.fields[0]!r}", role_hint)
    shift_hint = f"defined shifts: {', '.join(sorted(checked.shifts)) or 'none'}"
    for rule in checked.of("g2"):
        _require(checked, rule, rule.fields[1] in checked.shifts, f"unknown shift {rule.fields[1]!r}", shift_hint)
    resources = {r.fields[1] for r in checked.of("p")}
    for rule in checked.of("p3"):
        _require(
            checked,
            rule,
            rule.fields[1] in resources,
            f"limit for resource {rule.fields[1]!r}, which no p line grants",
        )
    for rule in checked.of("p"):
        role, resource, _ = rule.fields[:3]
        _require(
            checked,
            rule,
            (role, resource) in checked.record_limits or bool({("p3", role, resource)} & (broken | checked.broken)),
            f"role {role!r} may use {resource!r} but has no records limit for it",
            f"add: p3, {role}, {resource}, <cap>, <quota>, <window> (write 'unlimited' deliberately)",
        )


def _check_allow_templates(checked: CheckedRules) -> None:
    """Allow lines are branch-agnostic templates naming one role, resource and action:
    the index grants a role in the branches where it is held. Wildcards and a branch are
    for deny lines only (the index implements nothing else, see `shape`)."""
    for rule in checked.of("p"):
        if len(rule.fields) > 3 and (WILDCARD in rule.fields[:3] or rule.fields[3] != WILDCARD):
            checked.problems.append(
                PolicyProblem(
                    rule.file,
                    rule.line,
                    "an allow line names a branch or uses *",
                    "allow lines are templates: p, role, resource, action; a role holds them in every branch "
                    "it is held in (g lines). Use * and branches in deny lines only",
                )
            )


def check_denies(checked: CheckedRules) -> None:
    """Every name in a deny line must exist: a typo'd employee id in a suspension would
    otherwise suspend nobody, and pass review."""
    roles = {r.fields[0] for r in checked.of("p")}
    employees = {r.fields[0] for r in checked.of("g") + checked.of("g3")}
    resources = {r.fields[1] for r in checked.of("p")}
    actions = {r.fields[2] for r in checked.of("p")}
    for rule in checked.denies:
        subject, resource, action = rule.fields[:3]
        for label, value, known, what in (
            ("subject", subject, roles | employees, "neither a role nor an employee on the roster"),
            ("resource", resource, resources, "not a resource any allow line grants"),
            ("action", action, actions, "not an action any allow line grants"),
        ):
            _require(
                checked,
                rule,
                value == WILDCARD or value in known,
                f"deny line: {label} {value!r} is {what}",
                "fix the spelling, or write * for any",
            )


def check_branch_codes(checked: CheckedRules, branches: dict[str, Branch]) -> None:
    """Every branch a roster or deny line names must be in branches.csv."""
    for rule in [*checked.of("g"), *checked.denies]:
        code = rule.fields[2] if rule.ptype == "g" else rule.fields[3]
        unknown = unknown_branch(code, branches) if code != WILDCARD else None
        if unknown:
            checked.problems.append(PolicyProblem(rule.file, rule.line, *unknown))


def _require(checked: CheckedRules, rule: Rule, ok: bool, message: str, hint: str = "") -> None:
    if not ok:
        checked.problems.append(PolicyProblem(rule.file, rule.line, message, hint))
