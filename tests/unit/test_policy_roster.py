"""The compact roster: what a snapshot built in a child process hands back must decide
exactly as the snapshot it was built as, and hold one profile per distinct profile."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest

from broker.policy.rule import ROSTER_LINES, parse_rules
from broker.policy.snapshot import PolicySnapshot, load_snapshot

REPO = Path(__file__).resolve().parents[2]
RESOURCES = (("waybill", "read"), ("waybill", "export"), ("waybill", "write"), ("customer", "read"))


@pytest.fixture
def staffed(tmp_path: Path) -> Path:
    """The shipped policy with 600 more employees: couriers and clerks of BR001-BR003 on
    two shifts, a few in two branches, a few HQ auditors."""
    target = tmp_path / "policies"
    shutil.copytree(REPO / "policies", target)
    lines = []
    for n in range(600):
        employee, branch = f"e7{n:04d}", f"BR00{n % 3 + 1}"
        if n % 50 == 0:
            lines += [f"g3, {employee}, auditor", f"g2, {employee}, always"]
            continue
        lines += [f"g, {employee}, {('courier', 'clerk')[n % 2]}, {branch}", f"g2, {employee}, day-cn"]
        if n % 40 == 1:
            lines.append(f"g, {employee}, manager, BR00{(n + 1) % 3 + 1}")
    with (target / "roster.csv").open("a") as roster:
        roster.write("\n".join(lines) + "\n")
    (target / "policy.toml").write_text("[roster]\nseveral_branches = true\n")
    return target


def decisions(snapshot: PolicySnapshot) -> dict[tuple[str, str, str, str], bool]:
    index = snapshot.index
    branches = sorted(index.branches)
    return {
        (employee, branch, resource, action): index.allows(employee, branch, resource, action)
        for employee in index.employees
        for branch in branches
        for resource, action in RESOURCES
    }


def test_a_pickled_snapshot_decides_as_the_one_it_was_built_as(staffed: Path) -> None:
    built = load_snapshot(staffed)
    copied: PolicySnapshot = pickle.loads(pickle.dumps(built, protocol=pickle.HIGHEST_PROTOCOL))  # noqa: S301
    assert copied.revision == built.revision
    assert len(copied.index.employees) == len(built.index.employees) == 607
    assert decisions(copied) == decisions(built)
    assert any(decisions(built).values()) and not all(decisions(built).values())
    for employee in ("e1001", "e70001", "e70050", "e70041"):
        mine, theirs = built.index.employees[employee], copied.index.employees[employee]
        assert (mine.roles_by_branch, mine.global_roles, mine.shifts) == (
            theirs.roles_by_branch,
            theirs.global_roles,
            theirs.shifts,
        )
        assert built.index.record_limit(mine, "waybill") == copied.index.record_limit(theirs, "waybill")
        assert built.index.rate_limit(mine) == copied.index.rate_limit(theirs)


def test_employees_with_the_same_roles_branches_and_shifts_share_one_profile(staffed: Path) -> None:
    snapshot = load_snapshot(staffed)
    roster = snapshot.index.employees
    first, second = roster["e70002"], roster["e70008"]  # couriers of BR003 on day-cn
    assert first.profile is second.profile
    assert first.id == "e70002" and second.id == "e70008"
    assert roster["e70003"].profile is not first.profile  # a clerk
    assert len(roster.profiles) < 20  # 607 employees
    assert roster.branches() == {rule.fields[2] for rule in snapshot.rules() if rule.ptype == "g"}


def test_the_roster_answers_as_a_read_only_mapping(staffed: Path) -> None:
    roster = load_snapshot(staffed).index.employees
    assert roster.get("e9999") is None and "e9999" not in roster and 1001 not in roster
    with pytest.raises(KeyError):
        roster["e9999"]
    assert "e1001" in roster and roster.get("e1001") == roster["e1001"]
    assert len(list(roster)) == len(roster) == 607
    assert roster["e1001"].roles_by_branch == {"BR001": frozenset({"courier"})}
    assert roster["e70000"].global_roles == {"auditor"} and roster["e70000"].roles_by_branch == {}


def test_the_roster_lines_are_not_kept_parsed_but_read_back_as_loaded(staffed: Path) -> None:
    snapshot = load_snapshot(staffed)
    assert snapshot.policy_lines and not any(rule.ptype in ROSTER_LINES for rule in snapshot.policy_lines)
    expected = parse_rules("roster.csv", (staffed / "roster.csv").read_bytes())[0]
    (staffed / "roster.csv").write_text("g, e1, courier, BR001\n")  # changed since: not what was loaded
    lines = [rule for rule in snapshot.rules() if rule.file == "roster.csv"]
    assert lines == expected and len(lines) > 1200
