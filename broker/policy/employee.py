"""The roster as the broker holds it: who works where, in which roles and shifts.

At 100,000 employees the roster is nearly all of a policy. Kept as one object per
employee (each with a dict of roles per branch and a tuple of shifts of its own) it took
~35 MB, 300,000 objects the cyclic GC walked on every full collection, and a reload
built in a child process could not be handed over without rebuilding them all on the
event loop. Yet a roster holds few distinct *profiles* (roles per branch, branch-less
roles, shifts): the bench's 100,000 employees hold about 4,000. So it is kept as

* a static trie of the employee ids (marisa-trie: about 2 bytes an id, pickled as one
  byte string and unpickled without building anything),
* an array of profile numbers, one per id, indexed by the trie's key ids,
* the distinct profiles, each one shared by everyone it describes.

An `Employee` (an id and its profile) is made when asked for: under a microsecond, and
nothing stays behind.
"""

from __future__ import annotations

import sys
from array import array
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, tzinfo
from typing import Any, TypeVar

import marisa_trie

from broker.policy.rule import Rule
from broker.policy.shift import Shift

T = TypeVar("T")

Assignment = tuple[frozenset[tuple[str, frozenset[str]]], frozenset[str]]
"""(roles per branch, global roles) as a hashable value."""

_INTERNED: dict[object, Any] = {}
"""Emptied by every `build_roster`, so it holds the current roster's role sets and
assignments (and those identity-provider tokens claimed since), not every roster's."""


def interned(value: T) -> T:
    """The one shared instance of this role set or assignment: its hash is computed once
    and the memos keyed by it hold one entry per value. Bounded: past 20,000 values, new
    ones are not shared (still correct: the memos compare by value)."""
    found: T | None = _INTERNED.get(value)
    if found is None:
        if len(_INTERNED) >= 20_000:
            return value
        found = _INTERNED[value] = value
    return found


@dataclass(frozen=True, slots=True, eq=False)
class Profile:
    """What the roster says of an employee apart from who they are. Compared and hashed
    by identity: one object per distinct profile of a roster, which keys per-profile
    memos (the guard's principals); what memos share by value is `roles` and
    `assignment`."""

    roles_by_branch: Mapping[str, frozenset[str]]
    global_roles: frozenset[str]
    shifts: tuple[Shift, ...]
    roles: frozenset[str] = field(init=False, compare=False)
    """Every role held, in any branch or globally: what limits and rates depend on, and
    the key of their memos (one entry per distinct set, not per employee)."""
    assignment: Assignment = field(init=False, compare=False)
    """Roles per branch and global roles as one value: what grants depend on, and the key
    of the grant memo (a newcomer whose colleagues in the same branch and roles were
    decided before finds their grants memoised)."""

    def __post_init__(self) -> None:
        roles = self.global_roles.union(*self.roles_by_branch.values())
        object.__setattr__(self, "roles", interned(roles))
        object.__setattr__(self, "assignment", interned((frozenset(self.roles_by_branch.items()), self.global_roles)))


@dataclass(frozen=True, slots=True)
class Employee:
    """One roster entry: an id and its profile."""

    id: str
    profile: Profile
    from_claims: bool = False
    """Branch and roles came from the token (IdP authoritative), not the roster: nothing
    is memoised under such an employee's id, since the next token may say otherwise
    (grants, limits and rates are memoised by roles, so they follow what the token claims)."""

    @classmethod
    def holding(
        cls,
        employee_id: str,
        roles_by_branch: Mapping[str, frozenset[str]],
        global_roles: frozenset[str] = frozenset(),
        shifts: tuple[Shift, ...] = (),
        from_claims: bool = False,
    ) -> Employee:
        """An employee with a profile of their own (from a token's claims, or a test)."""
        return cls(employee_id, Profile(roles_by_branch, global_roles, shifts), from_claims)

    @property
    def roles_by_branch(self) -> Mapping[str, frozenset[str]]:
        return self.profile.roles_by_branch

    @property
    def global_roles(self) -> frozenset[str]:
        return self.profile.global_roles

    @property
    def shifts(self) -> tuple[Shift, ...]:
        return self.profile.shifts

    @property
    def roles(self) -> frozenset[str]:
        return self.profile.roles

    @property
    def assignment(self) -> Assignment:
        return self.profile.assignment

    @property
    def zone(self) -> tzinfo:
        """The time zone times are shown in to this employee: their first shift's."""
        shifts = self.profile.shifts
        return shifts[0].zone if shifts else UTC


Described = tuple[tuple[tuple[str, tuple[str, ...]], ...], tuple[str, ...], tuple[str, ...]]
"""A profile as plain tuples: ((branch, roles), ...), global roles, shift names; sorted,
so equal profiles are equal tuples. What a roster pickles: unpickling 6,000 of these
takes a few milliseconds, 6,000 Profiles (dataclasses, dicts, frozensets) ten times that."""


SEEN_EMPLOYEES = 4096
"""How many looked-up employees a roster keeps at hand (about 0.5 MB)."""


class Roster(Mapping[str, Employee]):
    """Employee id -> Employee, for every employee on the roster (read-only).

    Each profile is made from its description the first time someone holding it is
    asked for, so an unpickled roster is ready to serve at once."""

    __slots__ = ("_described", "_ids", "_profile_of", "_profiles", "_seen", "_shifts")

    def __init__(
        self,
        ids: marisa_trie.Trie,
        profile_of: array[int],
        described: tuple[Described, ...],
        shifts: Mapping[str, Shift],
    ) -> None:
        self._ids = ids
        self._profile_of = profile_of
        self._described = described
        self._shifts = shifts
        self._profiles: list[Profile | None] = [None] * len(described)
        self._seen: dict[str, Employee] = {}
        """Employees looked up lately: a request asks for its employee several times (the
        decision, the signals), and a dict lookup is several times cheaper than the trie's
        and a new Employee. Emptied when full: bounded, whatever ids are asked for."""

    def __getitem__(self, employee_id: str) -> Employee:
        found = self.get(employee_id)
        if found is None:
            raise KeyError(employee_id)
        return found

    def get(self, employee_id: str, default: None = None) -> Employee | None:  # type: ignore[override]
        """One trie lookup (or none, for someone seen lately), without Mapping.get's
        KeyError for someone not on the roster (every request of a stranger asks)."""
        seen = self._seen.get(employee_id)
        if seen is not None:
            return seen
        key = self._ids.get(employee_id)
        if key is None:
            return default
        employee = Employee(employee_id, self._profile(self._profile_of[key]))
        if len(self._seen) >= SEEN_EMPLOYEES:
            self._seen.clear()
        self._seen[employee_id] = employee
        return employee

    def __contains__(self, employee_id: object) -> bool:
        return isinstance(employee_id, str) and employee_id in self._ids

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids.keys())

    def __len__(self) -> int:
        return len(self._ids)

    def __reduce__(self) -> tuple[type[Roster], tuple[Any, ...]]:
        return Roster, (self._ids, self._profile_of, self._described, self._shifts)

    @property
    def profiles(self) -> tuple[Profile, ...]:
        """The distinct profiles, each once."""
        return tuple(self._profile(number) for number in range(len(self._described)))

    def branches(self) -> frozenset[str]:
        """Every branch someone on the roster holds a role in."""
        return frozenset(branch for held, _, _ in self._described for branch, _ in held)

    def _profile(self, number: int) -> Profile:
        """Made on first use; two threads racing here make two equal profiles, harmless
        (the memos compare them by value)."""
        profile = self._profiles[number]
        if profile is None:
            held, global_roles, shift_names = self._described[number]
            profile = Profile(
                {branch: interned(frozenset(roles)) for branch, roles in held},
                interned(frozenset(global_roles)),
                tuple(self._shifts[name] for name in shift_names),
            )
            self._profiles[number] = profile
        return profile


def build_roster(
    roster: Iterable[Rule], global_roster: Iterable[Rule], assignments: Iterable[Rule], shifts: Mapping[str, Shift]
) -> Roster:
    """The roster of the checked g (employee, role, branch), g3 (employee, role) and g2
    (employee, shift) lines."""
    by_branch: defaultdict[str, defaultdict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for rule in roster:
        employee, role, branch = rule.fields
        by_branch[employee][sys.intern(branch)].add(sys.intern(role))
    global_roles: defaultdict[str, set[str]] = defaultdict(set)
    for rule in global_roster:
        global_roles[rule.fields[0]].add(sys.intern(rule.fields[1]))
    shifts_of: defaultdict[str, list[str]] = defaultdict(list)
    for rule in assignments:
        shifts_of[rule.fields[0]].append(sys.intern(rule.fields[1]))
    _INTERNED.clear()
    ids = marisa_trie.Trie(by_branch.keys() | global_roles.keys())
    numbers: dict[Described, int] = {}
    profile_of = array("I", bytes(4 * len(ids)))
    for employee, key in ids.iteritems():
        held = tuple(sorted((branch, tuple(sorted(roles))) for branch, roles in by_branch.get(employee, {}).items()))
        described = (held, tuple(sorted(global_roles.get(employee, ()))), tuple(shifts_of.get(employee, ())))
        profile_of[key] = numbers.setdefault(described, len(numbers))
    used = {name: shifts[name] for name in {name for _, _, names in numbers for name in names}}
    return Roster(ids, profile_of, tuple(numbers), used)
