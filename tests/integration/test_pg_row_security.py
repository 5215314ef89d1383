"""`broker pg rls`: row-level security as a second layer under the door's branch scoping,
on the real PostgreSQL (issue #13).

The printed policies are applied to a database of their own (enabling row-level security
changes what every ordinary role sees there), for an ordinary login role that the door
then uses. A door bug is simulated by making the door's scoping believe the employee may
see every branch: the server itself still returns only the employee's branch.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

import broker.pg.session as session_module
from broker.pg.sql import Statement
from tests.conftest import BrokerFactory
from tests.harness import Harness, door_settings
from tests.pg_client import RawClient, errors, kinds, query
from tests.pg_fixtures import ADMIN_DSN, BRANCH_ROWS, direct, seeded_database

pytestmark = pytest.mark.timeout(90)

REPO = Path(__file__).resolve().parents[2]

OTHER_BRANCHES = "SELECT branch_code FROM waybills WHERE branch_code <> 'BR001' LIMIT 20"


@pytest.fixture(scope="module")
def rls_database() -> Iterator[str]:
    with seeded_database("broker_rls") as name:
        yield name


@pytest.fixture(scope="module")
def door_role(rls_database: str) -> Iterator[str]:
    """An ordinary login role with rights on the seeded tables, as the door's login."""
    name = f"broker_door_{secrets.token_hex(4)}"
    with direct(rls_database) as admin:
        admin.execute(f"CREATE ROLE {name} LOGIN")
        admin.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {name}")
        admin.execute(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {name}")
    yield name
    with direct(rls_database) as admin:
        admin.execute(f"DROP OWNED BY {name}")
        admin.execute(f"DROP ROLE {name}")


@pytest.fixture(scope="module")
def rls_sql(door_role: str) -> str:
    """What `broker pg rls` prints for the shipped tables.toml and the door's role."""
    done = subprocess.run(
        [sys.executable, "-m", "broker", "pg", "rls", "--policy", str(REPO / "policies"), "--role", door_role],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(autouse=True)
def without_row_security(rls_database: str) -> Iterator[None]:
    """Each test applies the policies itself, on tables without them."""
    yield
    with direct(rls_database) as admin:
        for table in ("waybills", "customers"):
            admin.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
            admin.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
            for policy in ("broker_rows", "broker_branches", "wide_open"):
                admin.execute(f"DROP POLICY IF EXISTS {policy} ON {table}")


def apply_rls(database: str, sql: str) -> None:
    with direct(database) as admin:
        admin.execute(sql)  # as the tables' owner


def as_role(database: str, role: str, branches: str | None) -> psycopg.Connection[Any]:
    """Straight to the database as the door's role, with the door's setting (or none)."""
    options = {} if branches is None else {"options": f"-c broker.branches={branches}"}
    return psycopg.connect(make_conninfo(ADMIN_DSN, dbname=database, user=role, **options), autocommit=True)


def branch_counts(conn: psycopg.Connection[Any], table: str = "waybills") -> dict[str, int]:
    rows = conn.execute(f"SELECT branch_code, count(*) FROM {table} GROUP BY branch_code").fetchall()
    return dict(rows)


def test_the_server_itself_returns_only_the_setting_s_branches(rls_database: str, door_role: str, rls_sql: str) -> None:
    with as_role(rls_database, door_role, "BR001") as conn:
        assert branch_counts(conn) == BRANCH_ROWS  # no policies yet: the setting alone does nothing
    apply_rls(rls_database, rls_sql)
    with as_role(rls_database, door_role, "BR001") as conn:
        assert conn.execute(OTHER_BRANCHES).fetchall() == []
        assert branch_counts(conn) == {"BR001": BRANCH_ROWS["BR001"]}
        assert branch_counts(conn, "customers") == {"BR001": 10}
    with as_role(rls_database, door_role, "BR001,BR003") as conn:
        assert branch_counts(conn) == {"BR001": BRANCH_ROWS["BR001"], "BR003": BRANCH_ROWS["BR003"]}
    with as_role(rls_database, door_role, "*") as conn:
        assert branch_counts(conn) == BRANCH_ROWS
    with direct(rls_database) as admin:  # a superuser bypasses row security: the data is all there
        assert branch_counts(admin) == BRANCH_ROWS


@pytest.mark.parametrize("branches", [None, "", "br001", "BR00", "BR0%", "**"])
def test_without_the_door_s_setting_no_rows(
    rls_database: str, door_role: str, rls_sql: str, branches: str | None
) -> None:
    apply_rls(rls_database, rls_sql)
    with as_role(rls_database, door_role, branches) as conn:
        assert branch_counts(conn) == {} and branch_counts(conn, "customers") == {}


def test_writes_outside_the_setting_are_refused_by_the_server(rls_database: str, door_role: str, rls_sql: str) -> None:
    apply_rls(rls_database, rls_sql)
    with as_role(rls_database, door_role, "BR001") as conn:
        with pytest.raises(psycopg.Error) as caught:
            conn.execute("INSERT INTO waybills (waybill_no, branch_code) VALUES ('RLS-1', 'BR002')")
        assert caught.value.sqlstate == "42501"
        with pytest.raises(psycopg.Error) as caught:
            conn.execute("UPDATE waybills SET branch_code = 'BR002' WHERE id = (SELECT min(id) FROM waybills)")
        assert caught.value.sqlstate == "42501"
        changed = conn.execute("UPDATE waybills SET status = 'x' WHERE branch_code = 'BR002'").rowcount
        assert changed == 0  # other branches' rows are not there to change
    with direct(rls_database) as admin:
        assert admin.execute("SELECT count(*) FROM waybills WHERE status = 'x'").fetchone() == (0,)


def test_another_permissive_policy_cannot_widen_it(rls_database: str, door_role: str, rls_sql: str) -> None:
    apply_rls(rls_database, rls_sql)
    with direct(rls_database) as admin:
        admin.execute("CREATE POLICY wide_open ON waybills AS PERMISSIVE FOR SELECT TO PUBLIC USING (true)")
    with as_role(rls_database, door_role, "BR001") as conn:
        assert branch_counts(conn) == {"BR001": BRANCH_ROWS["BR001"]}


def test_applying_it_twice_is_harmless(rls_database: str, door_role: str, rls_sql: str) -> None:
    apply_rls(rls_database, rls_sql)
    apply_rls(rls_database, rls_sql)
    with direct(rls_database) as admin:
        found = admin.execute(
            "SELECT tablename, policyname, permissive FROM pg_policies WHERE policyname LIKE 'broker_%' ORDER BY 1, 2"
        ).fetchall()
    assert found == [
        ("customers", "broker_branches", "RESTRICTIVE"),
        ("customers", "broker_rows", "PERMISSIVE"),
        ("waybills", "broker_branches", "RESTRICTIVE"),
        ("waybills", "broker_rows", "PERMISSIVE"),
    ]


# --- through the door --------------------------------------------------------------------


@pytest.fixture
async def rls_broker(make_broker: BrokerFactory, rls_database: str, door_role: str) -> Harness:
    return await make_broker(
        postgres=door_settings(rls_database, server_user=door_role, allow_superuser=False),
    )


@pytest.fixture
def door_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    """The door's scoping as if it believed every employee may see every branch."""
    scoped = session_module.scoped_sql

    def unscoped(statements: list[Statement], branches: frozenset[str] | None, cap: int | None) -> str:
        return scoped(statements, None, cap)

    monkeypatch.setattr(session_module, "scoped_sql", unscoped)


async def _connect(harness: Harness, employee: str = "e1001") -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(harness.pg_dsn(employee), autocommit=True)


@pytest.mark.usefixtures("door_bug")
async def test_a_door_bug_cannot_return_another_branch_s_rows(
    rls_broker: Harness, rls_database: str, door_role: str, rls_sql: str
) -> None:
    conn = await _connect(rls_broker)  # e1001, a courier of BR001
    leaked = await (await conn.execute(OTHER_BRANCHES)).fetchall()
    assert leaked, "the simulated bug should leak without row security"
    await conn.close()
    apply_rls(rls_database, rls_sql)
    for prepare in (False, True):
        conn = await _connect(rls_broker)
        cur = await conn.execute(OTHER_BRANCHES, prepare=prepare)
        assert await cur.fetchall() == []
        cur = await conn.execute("SELECT branch_code FROM waybills LIMIT 50", prepare=prepare)
        assert {row[0] for row in await cur.fetchall()} == {"BR001"}
        await conn.close()
    hq = await _connect(rls_broker, "e9001")  # an auditor of every branch
    cur = await hq.execute("SELECT branch_code, count(*) FROM waybills GROUP BY branch_code LIMIT 10")
    assert dict(await cur.fetchall()) == BRANCH_ROWS
    await hq.close()


SETTING_CHANGES = {
    "SET": "SET broker.branches = '*'",
    "SET TO": "SET broker.branches TO 'BR001,BR002'",
    "SET SESSION": "SET SESSION broker.branches = '*'",
    "SET LOCAL": "SET LOCAL broker.branches = '*'",
    "SET quoted": 'SET "broker"."branches" = \'*\'',
    "SET upper case": "SET BROKER.BRANCHES = '*'",
    "RESET": "RESET broker.branches",
    "RESET ALL": "RESET ALL",
    "DISCARD ALL": "DISCARD ALL",
    "set_config": "SELECT set_config('broker.branches', '*', false)",
    "set_config qualified": "SELECT pg_catalog.set_config('broker.branches', '*', true)",
    "set_config in FROM": "SELECT * FROM waybills, set_config('broker.branches', '*', true) s LIMIT 1",
    "current_setting": "SELECT current_setting('broker.branches')",
    "current_setting missing_ok": "SELECT current_setting('broker.branches', true)",
    "SHOW": "SHOW broker.branches",
    "SHOW ALL": "SHOW ALL",
    "pg_settings": "SELECT setting FROM pg_settings WHERE name = 'broker.branches'",
    "SET ROLE": "SET ROLE postgres",
    "SET SESSION AUTHORIZATION": "SET SESSION AUTHORIZATION postgres",
    "SET row_security": "SET row_security = off",
    "ALTER ROLE": "ALTER ROLE CURRENT_USER SET broker.branches = '*'",
    "DO": "DO $$ BEGIN PERFORM set_config('broker.branches', '*', false); END $$",
}


async def test_a_client_cannot_change_or_read_the_setting_through_the_door(
    rls_broker: Harness, rls_database: str, door_role: str, rls_sql: str
) -> None:
    apply_rls(rls_database, rls_sql)
    conn = await _connect(rls_broker)
    wrong = {}
    for name, sql in SETTING_CHANGES.items():
        try:
            cur = await conn.execute(sql)
        except psycopg.Error as error:
            if error.sqlstate != "42501":
                wrong[name] = f"{error.sqlstate}: {error}"
        else:
            wrong[name] = f"answered {cur.statusmessage} {cur.rowcount}"
    assert wrong == {}
    cur = await conn.execute("SELECT branch_code, count(*) FROM waybills GROUP BY branch_code LIMIT 10")
    assert dict(await cur.fetchall()) == {"BR001": BRANCH_ROWS["BR001"]}
    await conn.close()


async def test_a_client_cannot_pass_the_setting_at_start_up(
    rls_broker: Harness, rls_database: str, door_role: str, rls_sql: str
) -> None:
    apply_rls(rls_database, rls_sql)
    with pytest.raises(psycopg.OperationalError) as caught:
        await psycopg.AsyncConnection.connect(rls_broker.pg_dsn("e1001", options="-c broker.branches=*"))
    assert "broker.branches cannot be set" in str(caught.value)
    client = await RawClient.open(rls_broker.pg_port)  # as a start-up parameter of its own: not passed on
    await client.login(rls_broker, extra={"broker.branches": "*"})
    client.writer.write(query("SELECT branch_code, count(*) FROM waybills GROUP BY branch_code LIMIT 10"))
    seen = await client.until(b"Z")
    assert errors(seen) == [] and kinds(seen).count(b"D") == 1
    await client.close()


async def test_a_reload_that_changes_the_employee_s_branches_ends_their_sessions(
    rls_broker: Harness, rls_database: str, door_role: str, policy_dir: Path, rls_sql: str
) -> None:
    apply_rls(rls_database, rls_sql)
    roster = policy_dir / "roster.csv"  # e1005, a day-shift clerk of BR001 (the policy's own tests pin the others)
    roster.write_text(roster.read_text() + "\ng, e1005, clerk, BR001\ng2, e1005, day-cn\n")
    assert await rls_broker.broker.reload("test")
    moved, stays = await _connect(rls_broker, "e1005"), await _connect(rls_broker, "e1001")  # both of BR001
    roster.write_text(roster.read_text().replace("g, e1005, clerk, BR001", "g, e1005, clerk, BR002"))
    assert await rls_broker.broker.reload("test")
    with pytest.raises(psycopg.OperationalError) as caught:
        await moved.execute("SELECT branch_code FROM waybills LIMIT 5")
    assert caught.value.sqlstate == "57P01" and "Reconnect" in (caught.value.diag.message_hint or "")
    cur = await stays.execute("SELECT branch_code FROM waybills LIMIT 5")  # nothing changed for e1001
    assert {row[0] for row in await cur.fetchall()} == {"BR001"}
    again = await _connect(rls_broker, "e1005")
    cur = await again.execute("SELECT branch_code FROM waybills LIMIT 5")
    assert {row[0] for row in await cur.fetchall()} == {"BR002"}
    for conn in (moved, stays, again):
        await conn.close()
