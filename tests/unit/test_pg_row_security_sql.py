"""The row-security setting's value and `broker pg rls` without a database (the policies
themselves are tested on the real server in tests/integration/test_pg_row_security.py)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest

from broker.core.access import Principal
from broker.pg.rls_command import EXIT_BAD_CONFIG, EXIT_BAD_POLICY, run_rls
from broker.pg.row_security import branches_value, policy_sql, principal_value
from broker.policy.table import parse_tables

REPO = Path(__file__).resolve().parents[2]


def test_the_value_lists_the_employee_s_branches_or_every_branch_for_hq() -> None:
    assert branches_value(["BR003", "BR001"], []) == "BR001,BR003"
    assert branches_value(["BR003"], ["auditor"]) == "*"
    assert branches_value([], []) == ""
    assert principal_value(Principal("e1", ("courier",), ("BR002", "BR001"), (), ())) == "BR001,BR002"
    assert principal_value(None) == ""  # no principal, no rows


def test_the_policies_cover_every_branch_scoped_table_and_quote_names() -> None:
    text = (REPO / "policies" / "tables.toml").read_text()
    text += '\n[[table]]\nname = "depots"\nresource = "depot"\n\n[[table]]\nname = "order"\nresource = "order"\n'
    text += 'branch_column = "branch_code"\n'
    tables, problems = parse_tables("tables.toml", text.encode())
    assert tables is not None, problems
    sql = policy_sql(tables, 'door "x"', "tables.toml")
    assert sql.count("ENABLE ROW LEVEL SECURITY") == sql.count("FORCE ROW LEVEL SECURITY") == 3
    assert 'ALTER TABLE "public"."order" ENABLE' in sql and '"depots"' not in sql
    assert "left as they are: depots" in sql
    assert sql.count('TO "door ""x"""') == 6  # two policies a table, the role quoted
    assert sql.startswith("--") and "BEGIN;" in sql and sql.endswith("COMMIT;\n")


def _args(policies: Path, role: str | None = "broker") -> argparse.Namespace:
    return argparse.Namespace(config=None, policies=policies, role=role)


def test_the_command_fails_closed_on_a_missing_or_bad_table_map(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_rls(_args(tmp_path)) == EXIT_BAD_POLICY
    assert "cannot read" in capsys.readouterr().err
    (tmp_path / "tables.toml").write_text('[[table]]\nname = "waybills"\n')
    assert run_rls(_args(tmp_path)) == EXIT_BAD_POLICY
    assert "resource is required" in capsys.readouterr().err
    (tmp_path / "tables.toml").write_text('[[table]]\nname = "depots"\nresource = "depot"\n')
    assert run_rls(_args(tmp_path)) == EXIT_BAD_POLICY
    assert "no table with a branch_column" in capsys.readouterr().err


def test_the_command_prints_for_the_configured_role_or_the_one_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(REPO / "policies" / "tables.toml", tmp_path / "tables.toml")
    assert run_rls(_args(tmp_path, role=None)) == 0  # [postgres] server_user of the defaults
    assert 'TO "broker"' in capsys.readouterr().out
    assert run_rls(_args(tmp_path, role="door")) == 0
    assert 'TO "door"' in capsys.readouterr().out
    assert run_rls(_args(tmp_path, role="")) == EXIT_BAD_CONFIG
    assert "non-empty" in capsys.readouterr().err
