"""Warnings for policies that load but probably say something their authors did not mean."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from broker.policy.lint import lint
from broker.policy.snapshot import load_snapshot

SHIPPED = Path(__file__).resolve().parents[2] / "policies"


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(SHIPPED, target)
    return target


def append(policies: Path, name: str, text: str) -> int:
    path = policies / name
    path.write_text(path.read_text() + text)
    return len(path.read_text().splitlines())


def test_the_shipped_policy_has_no_warnings() -> None:
    assert lint(load_snapshot(SHIPPED)) == []


def test_employee_in_two_branches_allowed_by_the_policy_is_not_a_warning(policies: Path) -> None:
    append(policies, "roster.csv", "g, e1001, clerk, BR004\n")
    (policies / "policy.toml").write_text("[roster]\nseveral_branches = true\n")
    assert lint(load_snapshot(policies)) == []


def test_overlapping_shifts(policies: Path) -> None:
    line = append(policies, "shifts.csv", "g2, e1001, night-cn\ng2, e1001, always\n")
    warnings = lint(load_snapshot(policies))
    assert any(w.line == line and "day-cn and always overlap" in w.message for w in warnings), warnings
    assert not any("day-cn and night-cn" in w.message for w in warnings)  # 08-18 and 22-06 never meet


def test_role_nobody_holds(policies: Path) -> None:
    line = append(policies, "roles.csv", "p, dispatcher, waybill, read\n")
    append(policies, "limits.csv", "p3, dispatcher, waybill, 10, 10, shift\np5, dispatcher, 5, shift\n")
    [warning] = lint(load_snapshot(policies))
    assert (warning.file, warning.line) == ("roles.csv", line)
    assert "no employee holds role 'dispatcher'" in warning.message


def test_route_shadowed_by_an_earlier_one(policies: Path) -> None:
    routes = policies / "routes.toml"
    routes.write_text(
        routes.read_text()
        + '\n[[route]]\nmethod = "GET"\npath = "/api/waybills/export"\nresource = "waybill"\naction = "read"\n'
        'records = "list"\nbranch_field = "branch_code"\n'
    )
    [warning] = lint(load_snapshot(policies))
    assert warning.file == "routes.toml"
    assert "route GET /api/waybills/export can never match: GET /api/waybills/{waybill_no}" in warning.message


def test_a_policy_without_a_help_desk_contact_is_warned_about(policies: Path) -> None:
    (policies / "messages.toml").unlink()
    [warning] = lint(load_snapshot(policies))
    assert (warning.file, warning.line) == ("messages.toml", 1)
    assert "refusals do not say how to reach the help desk" in warning.message and "[contact]" in warning.hint
