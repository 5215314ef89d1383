"""The loaded policy compiled into dictionaries, so a decision costs a few lookups.

A full pycasbin `enforce()` costs ~250 us here whatever the roster size; the index
answers the same question (may this employee do this action on this resource in this
branch?) in about a microsecond. Casbin stays the language and the source of truth: a
model is loaded only once it is proven to be one of the shapes this index implements
(`shape`), and the index is built from the same checked lines Casbin would load; the
differential tests compare the two on every combination of random policies.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Container, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from broker.policy.employee import Employee, Roster, build_roster
from broker.policy.limit import (
    ProbeLimit,
    RateLimit,
    RecordLimit,
    most_generous_probes,
    most_generous_rate,
    most_generous_records,
)
from broker.policy.rule import Rule
from broker.policy.shift import Shift

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Grant:
    """Which branches an employee may touch for one resource and action."""

    branches: frozenset[str] | None
    """None: every branch (a global role granted it). Deny lines already taken out: a
    global grant with some branches denied is every known branch but those (so a record
    of a branch outside branches.csv is refused to such an employee: stricter, never
    looser than Casbin)."""
    rule: str
    denied: frozenset[str] | None = frozenset()
    """Branches deny lines close to this employee for this resource and action (None:
    every branch); empty unless a deny line took away something granted."""
    denial: str = ""
    """The deny line that did, cited to the employee."""
    everywhere: bool = False
    """Granted in every branch before the deny lines (a global role)."""

    @property
    def permitted(self) -> bool:
        return self.branches is None or bool(self.branches)

    def closes(self, branch: str) -> bool:
        """Whether a deny line, rather than the lack of a role, keeps `branch` closed."""
        return bool(self.denial) and (self.denied is None or branch in self.denied)

    def allows(self, branch: str) -> bool:
        """The question Casbin's matcher answers, exactly (also for unknown branches)."""
        if self.denied is None or branch in self.denied:
            return False
        return self.branches is None or self.everywhere or branch in self.branches


@dataclass(frozen=True, slots=True)
class Denial:
    """One deny line, for one (resource, action) it covers."""

    subject: str
    """"*", an employee id, or a role (held in the record's branch, or globally)."""
    branch: str | None
    """None: every branch."""
    rule: str


NOT_GRANTED = Grant(frozenset(), "")
_UNKNOWN = object()
"""Not in a memo yet (None is a valid memoised answer: no limit)."""


@dataclass(slots=True)
class PolicyIndex:
    employees: Roster
    grants: dict[tuple[str, str], dict[str, str]]
    """(resource, action) -> role -> the rule that grants it."""
    record_limits: dict[tuple[str, str], RecordLimit]
    rate_limits: dict[str, RateLimit]
    probe_limits: dict[str, ProbeLimit] = field(default_factory=dict)
    denials: dict[tuple[str, str], tuple[Denial, ...]] = field(default_factory=dict)
    """(resource, action) -> the deny lines covering it (wildcards expanded)."""
    named: frozenset[str] = frozenset()
    """Employees a deny line names by id: their grants are memoised under their id too,
    since a colleague with the same roles is not suspended."""
    branches: frozenset[str] = frozenset()
    """Every branch the policy knows: what a global grant minus denied branches leaves."""
    _grant_cache: dict[tuple[str, str], dict[object, Grant]] = field(default_factory=dict)
    """(resource, action) -> assignment -> grant. Grants depend on the roles held in each
    branch, not on who holds them; the grants themselves are shared (`_shared`), so a
    newcomer adds no object for the cyclic GC to track."""
    _limit_cache: dict[frozenset[str], dict[str, RecordLimit | None]] = field(default_factory=dict)
    """role set -> resource -> limit: limits depend on the roles held, not on who holds them."""
    _rate_cache: dict[frozenset[str], RateLimit | None] = field(default_factory=dict)
    """role set -> rate."""
    _probe_cache: dict[frozenset[str], ProbeLimit | None] = field(default_factory=dict)
    """role set -> probe budget."""
    _shared: dict[object, Any] = field(default_factory=dict)
    """One instance per distinct Grant value."""

    def grant(self, employee: Employee, resource: str, action: str) -> Grant:
        """Branches `employee` may touch; memoised per assignment and policy revision (the
        index is rebuilt on every reload, so a stale entry cannot outlive its policy)."""
        memo = self._grant_cache.get((resource, action))
        if memo is None:
            memo = self._grant_cache[(resource, action)] = {}
        key: object = employee.assignment
        if employee.id in self.named:
            key = (key, employee.id)
        cached = memo.get(key)
        if cached is None:
            granted = self._grant_uncached(employee, resource, action)
            cached = self._one(self._denied(employee, resource, action, granted))
            if len(memo) < 200_000:
                memo[key] = cached
        return cached

    def _one(self, value: T) -> T:
        """The shared instance equal to `value` (a Grant)."""
        if len(self._shared) >= 10_000:
            return value
        found: T = self._shared.setdefault(value, value)
        return found

    def _grant_uncached(self, employee: Employee, resource: str, action: str) -> Grant:
        roles = self.grants.get((resource, action))
        if not roles:
            return NOT_GRANTED
        for role in sorted(employee.global_roles):
            if role in roles:
                return Grant(None, roles[role])
        branches = {b for b, held in employee.roles_by_branch.items() if not held.isdisjoint(roles)}
        if not branches:
            return NOT_GRANTED
        rule = next(roles[r] for b in sorted(branches) for r in sorted(employee.roles_by_branch[b]) if r in roles)
        return Grant(frozenset(branches), rule)

    def _denied(self, employee: Employee, resource: str, action: str, grant: Grant) -> Grant:
        """`grant` less what deny lines close (deny wins over any allow, as Casbin's
        `some(allow) && !some(deny)` effect says)."""
        denials = self.denials.get((resource, action))
        if not denials or not grant.permitted:
            return grant
        closed, rule = _closed(employee, denials)
        if closed is None:
            return Grant(frozenset(), grant.rule, None, rule, grant.branches is None)
        if grant.branches is None:
            return Grant(self.branches - closed, grant.rule, closed, rule, True) if closed else grant
        if grant.branches.isdisjoint(closed):
            return grant
        return Grant(grant.branches - closed, grant.rule, closed, rule)

    def allows(self, employee_id: str, branch: str, resource: str, action: str) -> bool:
        """The same question `enforce(employee, branch, resource, action)` answers."""
        employee = self.employees.get(employee_id)
        if employee is None:
            return False
        return self.grant(employee, resource, action).allows(branch)

    def record_limit(self, employee: Employee, resource: str) -> RecordLimit | None:
        """The employee's limit for `resource`, memoised per role set and policy revision
        (the index is rebuilt on every reload)."""
        memo = self._limit_cache.get(employee.roles)
        if memo is None:
            memo = {}
            if len(self._limit_cache) < 10_000:
                self._limit_cache[employee.roles] = memo
        cached = memo.get(resource, _UNKNOWN)
        if cached is not _UNKNOWN:
            return cached  # type: ignore[return-value]
        found = [self.record_limits[(r, resource)] for r in employee.roles if (r, resource) in self.record_limits]
        limit = memo[resource] = most_generous_records(found)
        return limit

    def roles(self) -> frozenset[str]:
        """Every role some permission line grants."""
        return frozenset(role for granted in self.grants.values() for role in granted)

    def rate_limit(self, employee: Employee) -> RateLimit | None:
        """The employee's request rate, memoised per role set like the record limits."""
        cached = self._rate_cache.get(employee.roles, _UNKNOWN)
        if cached is not _UNKNOWN:
            return cached  # type: ignore[return-value]
        rate = most_generous_rate([self.rate_limits[r] for r in employee.roles if r in self.rate_limits])
        if len(self._rate_cache) < 10_000:
            self._rate_cache[employee.roles] = rate
        return rate

    def probe_limit(self, employee: Employee) -> ProbeLimit | None:
        """The employee's probe budget, memoised per role set like the rate."""
        cached = self._probe_cache.get(employee.roles, _UNKNOWN)
        if cached is not _UNKNOWN:
            return cached  # type: ignore[return-value]
        probe = most_generous_probes([self.probe_limits[r] for r in employee.roles if r in self.probe_limits])
        if len(self._probe_cache) < 10_000:
            self._probe_cache[employee.roles] = probe
        return probe


def _closed(employee: Employee, denials: tuple[Denial, ...]) -> tuple[frozenset[str] | None, str]:
    """Branches the deny lines close to `employee` (None: all), and the first such line."""
    closed: set[str] = set()
    first = ""
    for denial in denials:
        if denial.subject in ("*", employee.id) or denial.subject in employee.global_roles:
            if denial.branch is None:
                return None, denial.rule
            scope = {denial.branch}
        else:
            scope = {b for b, held in employee.roles_by_branch.items() if denial.subject in held}
            if denial.branch is not None:
                scope &= {denial.branch}
        if scope:
            closed |= scope
            first = first or denial.rule
    return frozenset(closed), first


def compile_denials(
    denies: Iterable[Rule], granted: Iterable[tuple[str, str]], people: Container[str]
) -> tuple[dict[tuple[str, str], tuple[Denial, ...]], frozenset[str]]:
    """Deny lines per granted (resource, action), and the employee ids they name. A pair
    no allow line grants needs none: it is refused anyway."""
    pairs = sorted(set(granted))
    found: defaultdict[tuple[str, str], list[Denial]] = defaultdict(list)
    named: set[str] = set()
    for rule in denies:
        subject, resource, action, branch = rule.fields[:4]
        if subject in people:
            named.add(subject)
        denial = Denial(subject, None if branch == "*" else branch, f"{rule} ({rule.where})")
        for pair in pairs:
            if resource in ("*", pair[0]) and action in ("*", pair[1]):
                found[pair].append(denial)
    return {pair: tuple(lines) for pair, lines in found.items()}, frozenset(named)


def build_index(
    grants: Iterable[Rule],
    roster: Iterable[Rule],
    global_roster: Iterable[Rule],
    assignments: Iterable[Rule],
    shifts: dict[str, Shift],
    record_limits: dict[tuple[str, str], RecordLimit],
    rate_limits: dict[str, RateLimit],
    probe_limits: dict[str, ProbeLimit] | None = None,
    denies: Iterable[Rule] = (),
    branches: Iterable[str] = (),
) -> PolicyIndex:
    employees = build_roster(roster, global_roster, assignments, shifts)
    granted: defaultdict[tuple[str, str], dict[str, str]] = defaultdict(dict)
    for rule in grants:
        role, resource, action = rule.fields[:3]
        granted[(resource, action)].setdefault(role, f"{rule} ({rule.where})")
    denials, named = compile_denials(denies, granted, employees)
    known = frozenset(branches) | employees.branches()
    return PolicyIndex(employees, dict(granted), record_limits, rate_limits, probe_limits or {}, denials, named, known)
