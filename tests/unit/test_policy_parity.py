"""The compiled PolicyIndex against pycasbin's `enforce()`, on every combination.

The broker decides with the index and keeps Casbin as the language and the source of
truth. A load proves the model is one of the shapes the index implements (`shape`); these
tests are the other half of that proof: for each shape, the index and the real
`enforce()` agree on every (employee, branch, resource, action) of the shipped policy and
of randomly generated ones (allow lines, deny lines of every kind, several branches,
global roles) written to disk and loaded through `load_snapshot`. Also: which branches
`grant()` returns, and which limits an employee with several roles gets.
"""

from __future__ import annotations

import itertools
import random
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from broker.policy import employee as employee_module
from broker.policy.employee import Employee
from broker.policy.index import NOT_GRANTED
from broker.policy.problem import PolicyError
from broker.policy.shape import ALLOW_ONLY
from broker.policy.snapshot import PolicySnapshot, load_snapshot

SHIPPED = Path(__file__).resolve().parents[2] / "policies"
UNKNOWN_EMPLOYEE = "e0000"
UNKNOWN_BRANCH = "BR-NONE"
UNKNOWN_PAIR = ("no-such-resource", "read")
RESOURCES = ("waybill", "customer", "parcel")
ACTIONS = ("read", "write")

Combination = tuple[str, str, str, str]


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    """The shipped policy, allowing regional staff in several branches."""
    target = tmp_path / "policies"
    shutil.copytree(SHIPPED, target)
    (target / "policy.toml").write_text("[roster]\nseveral_branches = true\n", encoding="utf-8")
    return target


@pytest.fixture(scope="module")
def shipped() -> PolicySnapshot:
    return load_snapshot(SHIPPED)


def append(directory: Path, name: str, lines: Iterable[str]) -> None:
    path = directory / name
    path.write_text(path.read_text(encoding="utf-8") + "".join(f"{line}\n" for line in lines), encoding="utf-8")
    if name == "roster.csv":  # every employee needs a shift
        hired = sorted({line.split(", ")[1] for line in lines})
        append(directory, "shifts.csv", [f"g2, {emp}, always" for emp in hired])


def combinations(
    employees: Iterable[str], branches: Iterable[str], pairs: Iterable[tuple[str, str]]
) -> Iterator[Combination]:
    for employee, branch, (resource, action) in itertools.product(employees, branches, pairs):
        yield employee, branch, resource, action


def disagreements(snapshot: PolicySnapshot, everything: Iterable[Combination]) -> tuple[int, list[str]]:
    """How many combinations were compared, and where `enforce()` and the index differ."""
    enforce = snapshot.casbin_enforcer().enforce
    allows = snapshot.index.allows
    checked, differ = 0, []
    for combination in everything:
        expected = bool(enforce(*combination))
        if allows(*combination) != expected:
            differ.append(f"{'/'.join(combination)}: enforce={expected}")
        checked += 1
    return checked, differ


def every_branch(snapshot: PolicySnapshot) -> set[str]:
    return {b for e in snapshot.index.employees.values() for b in e.roles_by_branch}


# --- the shipped policy ---------------------------------------------------------------


def test_shipped_policy_index_agrees_with_enforce_everywhere(shipped: PolicySnapshot) -> None:
    employees = [*sorted(shipped.index.employees), UNKNOWN_EMPLOYEE]
    branches = [*sorted(every_branch(shipped)), UNKNOWN_BRANCH]
    resources = sorted({resource for resource, _ in shipped.index.grants})
    actions = sorted({action for _, action in shipped.index.grants})
    pairs = [*itertools.product(resources, actions), UNKNOWN_PAIR]
    assert len(employees) >= 8
    assert {"BR001", "BR002", "BR003", "BR012"} <= set(branches)
    assert ("customer", "write") in pairs  # a pair no role is granted
    checked, differ = disagreements(shipped, combinations(employees, branches, pairs))
    assert checked == len(employees) * len(branches) * len(pairs)
    assert differ == []


def test_shipped_policy_spot_decisions(shipped: PolicySnapshot) -> None:
    index, enforce = shipped.index, shipped.casbin_enforcer().enforce
    for combination, expected in [
        (("e1001", "BR001", "waybill", "read"), True),
        (("e1001", "BR002", "waybill", "read"), False),
        (("e1001", "BR001", "waybill", "write"), False),
        (("e2001", "BR003", "customer", "read"), True),
        (("e2001", "BR012", "customer", "read"), False),
        (("e9001", UNKNOWN_BRANCH, "customer", "read"), True),
        (("e9001", "BR001", "waybill", "write"), False),
        ((UNKNOWN_EMPLOYEE, "BR001", "waybill", "read"), False),
    ]:
        assert index.allows(*combination) is expected, combination
        assert bool(enforce(*combination)) is expected, combination


# --- randomly generated policies ------------------------------------------------------


@dataclass(frozen=True)
class Generated:
    employees: list[str]
    """Everyone written to the files, including employees with a shift but no role."""
    branches: list[str]
    kinds: dict[str, str]


KINDS = ("one-branch", "two-branches", "global", "global-and-branch", "no-role")


ALLOW_ONLY_MODEL = f"""[request_definition]
r = sub, dom, obj, act
[policy_definition]
p = {", ".join(ALLOW_ONLY.policy)}
p2 = shift, start, end, days, tz
p3 = role, obj, cap, quota, window
p4 = role, requests, per
p5 = role, probes, per
[role_definition]
g = _, _, _
g2 = _, _
g3 = _, _
[policy_effect]
e = {ALLOW_ONLY.effect}
[matchers]
m = {ALLOW_ONLY.matcher}
"""


def write_branches(directory: Path, codes: Iterable[str]) -> None:
    listed = "".join(f"{code}, branch {code}, Asia/Shanghai, \n" for code in codes)
    (directory / "branches.csv").write_text(listed, encoding="utf-8")


def deny_lines(rng: random.Random, roster: list[str], role_lines: list[str]) -> list[str]:
    """2-8 distinct deny lines of every kind (an employee, a role in one branch or in all,
    everyone on one resource or in one branch; specific or * resource and action), most
    aimed at something a roster line grants so that they take effect."""
    granted = [line.split(", ")[1:] for line in role_lines]
    lines: set[str] = set()
    for _ in range(rng.randint(2, 8)):
        _, emp, role, *where = rng.choice(roster).split(", ")
        resource, action = rng.choice([pair for r, *pair in granted if r == role] or [["*", "*"]])
        subject = rng.choice(["*", role, emp, emp])
        resource, action = rng.choice(["*", resource]), rng.choice(["*", action])
        branch = rng.choice(["*", *where]) if where else "*"
        if subject == "*" and branch == "*" and resource == "*":
            continue  # would close everything, and test nothing
        lines.add(f"p, {subject}, {resource}, {action}, {branch}, deny")
    return sorted(lines)


def generate_policy(rng: random.Random, directory: Path, *, denies: bool = True) -> Generated:
    """A random but valid policy: 30-80 employees, 3-6 roles, 4-8 branches; deny lines
    unless `denies` is False, which also writes the allow-only model."""
    directory.mkdir()
    if denies:
        shutil.copy(SHIPPED / "model.conf", directory / "model.conf")
    else:
        (directory / "model.conf").write_text(ALLOW_ONLY_MODEL, encoding="utf-8")
    roles = [f"role-{n}" for n in range(rng.randint(3, 6))]
    branches = [f"BR{n:03d}" for n in rng.sample(range(1, 1000), rng.randint(4, 8))]
    all_pairs = list(itertools.product(RESOURCES, ACTIONS))
    grants = {role: sorted(rng.sample(all_pairs, rng.randint(1, 3))) for role in roles}

    role_lines = [f"p, {role}, {resource}, {action}" for role in roles for resource, action in grants[role]]
    limit_lines = [
        f"p3, {role}, {resource}, {rng.randint(1, 500)}, {rng.choice(['unlimited', rng.randint(500, 9000)])}, "
        f"{rng.choice(['shift', '8h', '1d'])}"
        for role in roles
        for resource in sorted({resource for resource, _ in grants[role]})
    ]
    limit_lines += [f"p4, {role}, {rng.randint(10, 600)}, 1m" for role in roles if rng.random() < 0.7]

    ids = [f"e{n:04d}" for n in rng.sample(range(1001, 10000), rng.randint(30, 80))]
    kinds = {emp: KINDS[i] if i < len(KINDS) else rng.choice(KINDS) for i, emp in enumerate(ids)}
    roster: list[str] = []
    for emp in ids:
        kind = kinds[emp]
        if kind in ("one-branch", "global-and-branch"):
            branch = rng.choice(branches)
            roster += [f"g, {emp}, {role}, {branch}" for role in rng.sample(roles, rng.randint(1, 2))]
        if kind == "two-branches":
            first, second = rng.sample(branches, 2)
            roster.append(f"g, {emp}, {rng.choice(roles)}, {first}")
            roster.append(f"g, {emp}, {rng.choice(roles)}, {second}")
        if kind in ("global", "global-and-branch"):
            roster.append(f"g3, {emp}, {rng.choice(roles)}")
    rng.shuffle(roster)
    shifts = ["p2, always, 00:00, 24:00, daily, Asia/Shanghai", *(f"g2, {emp}, always" for emp in ids)]

    (directory / "roles.csv").write_text("".join(f"{line}\n" for line in role_lines), encoding="utf-8")
    (directory / "limits.csv").write_text("".join(f"{line}\n" for line in limit_lines), encoding="utf-8")
    (directory / "roster.csv").write_text("".join(f"{line}\n" for line in roster), encoding="utf-8")
    (directory / "shifts.csv").write_text("".join(f"{line}\n" for line in shifts), encoding="utf-8")
    write_branches(directory, branches)
    (directory / "policy.toml").write_text("[roster]\nseveral_branches = true\n", encoding="utf-8")
    if denies:
        closed = deny_lines(rng, roster, role_lines)
        (directory / "deny.csv").write_text("".join(f"{line}\n" for line in closed), encoding="utf-8")
    resource, action = grants[roles[0]][0]
    (directory / "routes.toml").write_text(
        f'[[route]]\npath = "/api/x"\nresource = "{resource}"\naction = "{action}"\nrecords = "none"\n'
        'branch = "query:branch"\n',
        encoding="utf-8",
    )
    return Generated(ids, branches, kinds)


@pytest.mark.parametrize("denies", [True, False], ids=["allow-and-deny", "allow-only"])
@pytest.mark.parametrize("seed", [1, 7, 2024, 31337, 5, 6, 8, 9])
def test_random_policy_index_agrees_with_enforce_everywhere(tmp_path: Path, seed: int, denies: bool) -> None:
    generated = generate_policy(random.Random(seed), tmp_path / "policies", denies=denies)  # noqa: S311
    snapshot = load_snapshot(tmp_path / "policies")
    assert snapshot.model.shape.denies is denies
    index = snapshot.index
    assert set(generated.kinds.values()) == set(KINDS)
    assert any(len(e.roles_by_branch) == 2 for e in index.employees.values())
    assert any(e.global_roles for e in index.employees.values())
    assert any(emp not in index.employees for emp in generated.employees)  # the role-less ones

    employees = [*generated.employees, UNKNOWN_EMPLOYEE]
    branches = [*generated.branches, UNKNOWN_BRANCH]
    pairs = [*itertools.product(RESOURCES, ACTIONS), UNKNOWN_PAIR]
    checked, differ = disagreements(snapshot, combinations(employees, branches, pairs))
    assert checked == len(employees) * len(branches) * len(pairs)
    assert differ == []
    closed = [
        (emp, pair)
        for emp in index.employees
        for pair in index.grants
        if index.grant(employee(snapshot, emp), *pair).denial
    ]
    assert bool(closed) is denies  # the deny lines took something away that was granted


# --- grant() --------------------------------------------------------------------------


def employee(snapshot: PolicySnapshot, employee_id: str) -> Employee:
    return snapshot.index.employees[employee_id]


def test_grant_of_a_global_role_covers_every_branch(shipped: PolicySnapshot) -> None:
    auditor = employee(shipped, "e9001")
    grant = shipped.index.grant(auditor, "waybill", "read")
    assert grant.branches is None
    assert grant.permitted
    assert grant.rule.startswith("p, auditor, waybill, read (roles.csv:")


def test_grant_of_a_branch_role_lists_its_branches(shipped: PolicySnapshot) -> None:
    manager = employee(shipped, "e2001")
    grant = shipped.index.grant(manager, "customer", "read")
    assert grant.branches == frozenset({"BR003"})
    assert grant.permitted
    assert grant.rule.startswith("p, manager, customer, read (roles.csv:")


def test_grant_not_given(shipped: PolicySnapshot) -> None:
    courier = employee(shipped, "e1001")
    for resource, action in [("waybill", "write"), ("customer", "read"), UNKNOWN_PAIR]:
        grant = shipped.index.grant(courier, resource, action)
        assert grant == NOT_GRANTED
        assert grant.branches == frozenset()
        assert not grant.permitted
    auditor = employee(shipped, "e9001")
    assert shipped.index.grant(auditor, "waybill", "write") == NOT_GRANTED


def test_grant_across_several_branches_and_a_global_role(policies: Path) -> None:
    append(
        policies,
        "roster.csv",
        [
            "g, e3001, courier, BR001",
            "g, e3001, clerk, BR002",
            "g, e3001, manager, BR003",
            "g, e3002, manager, BR003",
            "g3, e3002, auditor",
            "g, e3003, trainee, BR005",
            "g, e3003, courier, BR005",
        ],
    )
    snapshot = load_snapshot(policies)
    index = snapshot.index
    multi = employee(snapshot, "e3001")
    assert index.grant(multi, "waybill", "read").branches == frozenset({"BR001", "BR002", "BR003"})
    assert index.grant(multi, "waybill", "write").branches == frozenset({"BR002", "BR003"})
    assert index.grant(multi, "customer", "read").branches == frozenset({"BR003"})
    mixed = employee(snapshot, "e3002")
    assert index.grant(mixed, "waybill", "read").branches is None  # the global auditor role
    assert index.grant(mixed, "waybill", "write").branches == frozenset({"BR003"})  # only as manager
    same_branch = employee(snapshot, "e3003")
    assert index.grant(same_branch, "waybill", "read").branches == frozenset({"BR005"})
    assert index.grant(same_branch, "waybill", "read").rule.startswith("p, courier, waybill, read")
    enforce = snapshot.casbin_enforcer().enforce
    for emp in ("e3001", "e3002", "e3003"):
        for branch in ("BR001", "BR002", "BR003", "BR005", UNKNOWN_BRANCH):
            for resource, action in [("waybill", "read"), ("waybill", "write"), ("customer", "read")]:
                combination = (emp, branch, resource, action)
                assert index.allows(*combination) == bool(enforce(*combination)), combination


# --- limits across roles --------------------------------------------------------------


def test_record_and_rate_limits_take_the_most_generous_role(policies: Path) -> None:
    append(
        policies,
        "roster.csv",
        ["g, e3001, courier, BR001", "g, e3001, clerk, BR002", "g, e3001, manager, BR003", "g3, e3002, auditor",
         "g, e3002, courier, BR001"],
    )  # fmt: skip
    snapshot = load_snapshot(policies)
    index = snapshot.index
    multi = employee(snapshot, "e3001")
    waybill = index.record_limit(multi, "waybill")
    assert waybill is not None
    assert (waybill.cap, waybill.quota, waybill.per_shift) == (200, 5000, True)
    assert waybill.rule.startswith("p3, manager, waybill, 200, 5000, shift (limits.csv:")
    customer = index.record_limit(multi, "customer")
    assert customer is not None
    assert (customer.cap, customer.quota) == (100, 1000)
    rate = index.rate_limit(multi)
    assert rate is not None
    assert (rate.requests, rate.period) == (300, 60)
    assert rate.rule.startswith("p4, manager, 300, 1m")

    hq = employee(snapshot, "e3002")
    hq_limit = index.record_limit(hq, "waybill")
    assert hq_limit is not None
    assert (hq_limit.cap, hq_limit.quota, hq_limit.window) == (1000, 20000, 86400)
    hq_rate = index.rate_limit(hq)
    assert hq_rate is not None
    assert hq_rate.requests == 600


def test_no_limit_for_a_resource_none_of_the_roles_has(shipped: PolicySnapshot) -> None:
    courier = employee(shipped, "e1001")
    assert shipped.index.record_limit(courier, "customer") is None
    assert shipped.index.record_limit(courier, "no-such-resource") is None
    single = shipped.index.record_limit(courier, "waybill")
    assert single is not None
    assert (single.cap, single.quota) == (50, 500)


def test_unlimited_beats_any_number(policies: Path) -> None:
    append(policies, "roles.csv", ["p, ops, waybill, read"])
    append(policies, "limits.csv", ["p3, ops, waybill, unlimited, unlimited, 1d", "p4, ops, 600, 1h"])
    append(policies, "roster.csv", ["g, e3001, courier, BR001", "g, e3001, ops, BR002"])
    snapshot = load_snapshot(policies)
    limit = snapshot.index.record_limit(employee(snapshot, "e3001"), "waybill")
    assert limit is not None
    assert (limit.cap, limit.quota) == (None, None)


def test_limits_are_memoised_per_role_set_not_per_first_asker(policies: Path) -> None:
    """Limits depend on the roles held only, so they are memoised per role set: two
    couriers share one answer, a courier who is also a manager elsewhere gets the
    manager's, and an identity provider's roles for the same person count, not the
    roster's."""
    append(policies, "roster.csv", ["g, e3001, courier, BR001", "g, e3001, manager, BR002"])
    snapshot = load_snapshot(policies)
    index = snapshot.index
    courier, other_courier, both = (employee(snapshot, e) for e in ("e1001", "e1002", "e3001"))
    assert courier.roles == other_courier.roles == frozenset({"courier"})
    assert courier.roles is other_courier.roles  # one shared set keys the memo
    first = index.record_limit(courier, "waybill")
    assert first is not None
    assert (first.cap, first.quota) == (50, 500)
    assert index.record_limit(other_courier, "waybill") is first
    mixed = index.record_limit(both, "waybill")
    assert mixed is not None
    assert (mixed.cap, mixed.quota) == (200, 5000)
    rate, mixed_rate = index.rate_limit(courier), index.rate_limit(both)
    assert rate is not None
    assert mixed_rate is not None
    assert (rate.requests, mixed_rate.requests) == (120, 300)
    as_manager = Employee.holding("e1001", {"BR001": frozenset({"manager"})}, frozenset(), courier.shifts, True)
    claimed, claimed_rate = index.record_limit(as_manager, "waybill"), index.rate_limit(as_manager)
    assert claimed is not None
    assert claimed_rate is not None
    assert (claimed.cap, claimed.quota, claimed_rate.requests) == (200, 5000, 300)
    assert index.record_limit(courier, "waybill") is first  # the roster's courier is unchanged
    assert index.rate_limit(courier) is rate


def test_grants_are_memoised_per_branch_and_roles_not_per_first_asker(shipped: PolicySnapshot) -> None:
    """Two couriers of different branches share roles but not grants; an identity
    provider's branch for the same person counts, not the roster's."""
    index = shipped.index
    br001, br002 = employee(shipped, "e1001"), employee(shipped, "e1002")
    assert br001.roles is br002.roles
    assert br001.assignment != br002.assignment
    assert index.grant(br001, "waybill", "read").branches == frozenset({"BR001"})
    assert index.grant(br002, "waybill", "read").branches == frozenset({"BR002"})
    moved = Employee.holding("e1001", {"BR002": frozenset({"courier"})}, frozenset(), br001.shifts, True)
    assert moved.assignment == br002.assignment
    assert index.grant(moved, "waybill", "read").branches == frozenset({"BR002"})
    assert index.grant(br001, "waybill", "read").branches == frozenset({"BR001"})


def test_role_sets_past_the_sharing_bound_still_key_the_memos(policies: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the intern table is full, new role sets are equal but not shared: the memos
    must still answer by value."""
    snapshot = load_snapshot(policies)
    courier = employee(snapshot, "e1001")
    expected = snapshot.index.record_limit(courier, "waybill")
    monkeypatch.setattr(employee_module, "_INTERNED", {frozenset({f"r{n}"}): frozenset() for n in range(20_000)})
    unshared = Employee.holding("e1001", {"BR001": frozenset({"courier"})}, frozenset(), courier.shifts, True)
    assert unshared.roles == courier.roles
    assert unshared.roles is not courier.roles
    assert snapshot.index.record_limit(unshared, "waybill") is expected


def test_rate_is_compared_per_second_not_by_raw_count(policies: Path) -> None:
    append(policies, "roles.csv", ["p, ops, waybill, read"])
    append(policies, "limits.csv", ["p3, ops, waybill, 10, 100, 1d", "p4, ops, 600, 1h"])
    append(policies, "roster.csv", ["g, e3001, courier, BR001", "g, e3001, ops, BR002"])
    snapshot = load_snapshot(policies)
    rate = snapshot.index.rate_limit(employee(snapshot, "e3001"))
    assert rate is not None
    assert (rate.requests, rate.period) == (120, 60)  # courier's 2/s beats ops's 600/h


# --- known defects (see the report) ---------------------------------------------------


def test_adding_a_role_never_lowers_the_cap(policies: Path) -> None:
    append(policies, "roles.csv", ["p, bulk, waybill, read"])
    append(policies, "limits.csv", ["p3, bulk, waybill, 10, 100000, 1d"])
    append(policies, "roster.csv", ["g, e3001, courier, BR001", "g, e3001, bulk, BR002"])
    snapshot = load_snapshot(policies)
    alone = snapshot.index.record_limit(employee(snapshot, "e1001"), "waybill")  # courier only
    both = snapshot.index.record_limit(employee(snapshot, "e3001"), "waybill")
    assert alone is not None
    assert both is not None
    assert alone.cap == 50
    assert both.cap is None or both.cap >= alone.cap


@pytest.mark.parametrize("subject", ["courier", "manager", "auditor"])
def test_subject_named_like_a_role_is_denied_by_the_broker(shipped: PolicySnapshot, subject: str) -> None:
    """pycasbin's role manager links every name to itself, so `enforce()` allows a subject
    whose id equals a role name. The broker never asks Casbin about such a subject: role
    names cannot be employee ids (check.py refuses them on the roster), and a token for a
    subject not on the roster is refused before any policy is consulted. The index, which
    decides, denies them everywhere."""
    branches = [*sorted(every_branch(shipped)), UNKNOWN_BRANCH]
    for branch in branches:
        for resource, action in sorted(shipped.index.grants):
            assert not shipped.index.allows(subject, branch, resource, action)
    assert subject not in shipped.index.employees


def test_a_loaded_policy_never_has_enforce_and_index_disagreeing(tmp_path: Path) -> None:
    roles = ["p, courier, waybill, read", "p, clerk, waybill, read", "p, manager, waybill, read",
             "p, manager, customer, read"]  # fmt: skip
    limits = ["p3, courier, waybill, 50, 500, 1d", "p3, clerk, waybill, 50, 500, 1d",
              "p3, manager, waybill, 50, 500, 1d", "p3, manager, customer, 50, 500, 1d"]  # fmt: skip
    pairs = [("waybill", "read"), ("customer", "read")]
    for size in range(200, 210):
        directory = tmp_path / f"policies-{size}"
        directory.mkdir()
        shutil.copy(SHIPPED / "model.conf", directory / "model.conf")
        write_branches(directory, ["BR001", "BR002"])
        (directory / "routes.toml").write_text(
            '[[route]]\npath = "/w"\nresource = "waybill"\naction = "read"\nrecords = "none"\n', encoding="utf-8"
        )
        (directory / "roles.csv").write_text("".join(f"{line}\n" for line in roles), encoding="utf-8")
        (directory / "limits.csv").write_text("".join(f"{line}\n" for line in limits), encoding="utf-8")
        roster = [f"g, e{n:04d}, courier, BR001" for n in range(size)] + ["g, clerk, manager, BR001"]
        (directory / "roster.csv").write_text("".join(f"{line}\n" for line in roster), encoding="utf-8")
        try:
            snapshot = load_snapshot(directory)
        except PolicyError:
            continue  # refused: fine
        employees = sorted(snapshot.index.employees)
        _, differ = disagreements(snapshot, combinations(employees, ["BR001", "BR002"], pairs))
        assert differ == [], f"roster of {size + 1} loaded with {differ}"
