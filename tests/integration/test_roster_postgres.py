"""`broker roster pull` from a query on a real PostgreSQL: a private database holding an
HR table, created for these tests and dropped afterwards."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from broker.policy.snapshot import load_snapshot
from tests.pg_fixtures import ADMIN_DSN
from tests.roster_workspace import Workspace

STAFF = [
    ("e1001", "courier", "BR001", "day-cn", 1),
    ("e1002", "courier", "BR002", "night-cn", 2),
    ("e1003", "trainee", "BR001", "day-cn", 3),
    ("e1004", "clerk", "BR001", "day-cn", 4),
    ("e2001", "manager", "BR003", "day-cn", 5),
    ("e2001", "manager", "BR003", "late-cn", 5),
    ("e2012", "manager", "BR012", "day-xj", 6),
    ("e9001", "auditor", None, "always", 7),
    ("e1005", "courier", "BR002", "night-cn", 8),
]
QUERY = "SELECT emp AS employee, job AS role, coalesce(branch, 'HQ') AS branch, shift FROM staff ORDER BY emp, shift"


@pytest.fixture(scope="module")
def hr_database() -> Iterator[str]:
    """A libpq connection string for a database holding HR's `staff` table."""
    name = f"broker_roster_{secrets.token_hex(4)}"
    dsn = ADMIN_DSN.replace("dbname=test", f"dbname={name}")
    with psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("CREATE TABLE staff (emp text, job text, branch text, shift text, badge int)")
                with conn.cursor() as cur:
                    cur.executemany("INSERT INTO staff VALUES (%s, %s, %s, %s, %s)", STAFF)
            yield dsn
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class PgWorkspace(Workspace):
    columns = ""  # the query names them as the defaults: employee, role, branch, shift

    def __init__(self, root: Path, dsn: str) -> None:
        self.dsn = dsn
        super().__init__(root)
        self.use(QUERY)

    def use(self, query: str, dsn: str = "", extra: str = "") -> None:
        source = f'source = "postgres"\ndsn = "{dsn or self.dsn}"\nquery = "{query}"\nquery_timeout_seconds = 2\n'
        self.configure(extra, source=source)


@pytest.fixture
def work(tmp_path: Path, hr_database: str) -> PgWorkspace:
    return PgWorkspace(tmp_path, hr_database)


def staff_count(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM staff").fetchone()
    assert row is not None
    return int(row[0])


def test_a_query_pull_writes_the_roster(work: PgWorkspace, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = work.pull(capsys)
    assert code == 0, err
    assert "roster from PostgreSQL postgres@127.0.0.1:5432/broker_roster_" in out and "added 1: e1005" in out
    roster = (work.policies / "roster.csv").read_text()
    assert "g, e1005, courier, BR002\n" in roster and "g3, e9001, auditor\n" in roster
    assert "e1005" in load_snapshot(work.policies).index.employees


def test_a_null_or_non_text_value_is_refused_at_its_row(work: PgWorkspace, capsys: pytest.CaptureFixture[str]) -> None:
    before = work.roster_files()
    work.use("SELECT emp AS employee, job AS role, branch, badge AS shift FROM staff ORDER BY emp, shift")
    code, _, err = work.pull(capsys)
    assert code == 1
    assert "query row 1: column shift: shift is int, not text (hint: cast it in the query: shift::text)" in err
    assert "query row 9: column branch: branch is NULL" in err and "never read as headquarters" in err
    assert work.roster_files() == before


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (
            "SELECT emp, job AS role, branch, shift FROM staff",
            "the query returns no column 'employee' (it returns emp,",
        ),
        ("SELECT * FROM staf", 'the query failed: relation "staf" does not exist (SQLSTATE 42P01)'),
        ("SELECT pg_sleep(5)", "the query ran longer than 2 s"),
        ("DELETE FROM staff RETURNING emp AS employee, job AS role, branch, shift", "the query tries to write"),
        ("SELECT 1; COMMIT; DELETE FROM staff", "cannot insert multiple commands into a prepared statement"),
        ("SET statement_timeout = 0", "the query returns no rows: it must be one SELECT"),
    ],
)
def test_a_query_that_cannot_give_a_roster_exits_3_and_changes_nothing(
    work: PgWorkspace, capsys: pytest.CaptureFixture[str], query: str, message: str
) -> None:
    before = work.roster_files()
    work.use(query)
    code, _, err = work.pull(capsys)
    assert code == 3 and message in err, err
    assert "the source cannot be read as a roster; nothing written" in err
    assert work.roster_files() == before
    assert staff_count(work.dsn) == len(STAFF), "the roster query changed HR's data"


def test_an_unreachable_database_is_named_without_its_password(
    work: PgWorkspace, capsys: pytest.CaptureFixture[str]
) -> None:
    work.use(QUERY, dsn="postgresql://hr:s3cret-pw@127.0.0.1:1/people")
    code, out, err = work.pull(capsys)
    assert code == 3
    assert "PostgreSQL hr@127.0.0.1:1/people: cannot connect:" in err
    assert "s3cret-pw" not in out + err


def test_a_dsn_that_does_not_parse_is_a_config_error_quoting_none_of_it(
    work: PgWorkspace, capsys: pytest.CaptureFixture[str]
) -> None:
    work.use(QUERY, dsn="postgresql://hr:pass word@127.0.0.1/people")
    code, out, err = work.pull(capsys)
    assert code == 2 and "[roster] dsn is not a connection string: unexpected spaces found in" in err
    assert "pass word" not in out + err
