"""The broker's own login to the database with SCRAM-SHA-256, against a private PostgreSQL
cluster that demands it (the machine's shared server trusts everyone on loopback)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import BrokerFactory
from tests.pg_cluster import scram_cluster

PASSWORD = "broker-test-password-7f3a"
pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def scram_server() -> Iterator[int]:
    """A private cluster where every login, on every address, needs SCRAM-SHA-256."""
    home = Path(tempfile.mkdtemp(prefix="broker-scram-"))  # not under pytest's root-only tmp
    try:
        for port in scram_cluster(home, PASSWORD):
            dsn = f"host=127.0.0.1 port={port} user=postgres password={PASSWORD} dbname=postgres"
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("CREATE TABLE waybills (id int, branch_code text)")
                conn.execute("INSERT INTO waybills VALUES (1, 'BR001'), (2, 'BR002')")
            yield port
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _door(port: int, password: str) -> dict[str, object]:
    return {
        "enabled": True,
        "port": 0,
        "server_port": port,
        "server_database": "postgres",
        "server_user": "postgres",
        "server_password": password,
        "allow_superuser": True,  # the private server's only login is its superuser
    }


async def test_the_broker_logs_in_with_scram_and_the_employee_never_sees_the_password(
    make_broker: BrokerFactory, scram_server: int
) -> None:
    harness = await make_broker(postgres=_door(scram_server, PASSWORD))
    conn = await psycopg.AsyncConnection.connect(harness.pg_dsn("e1001"), autocommit=True)
    cur = await conn.execute("SELECT id, branch_code FROM waybills LIMIT 10")
    assert await cur.fetchall() == [(1, "BR001")]
    await conn.close()
    assert PASSWORD not in harness.audit_path.read_text()


async def test_a_wrong_database_password_fails_the_login_without_naming_it(
    make_broker: BrokerFactory, scram_server: int
) -> None:
    harness = await make_broker(postgres=_door(scram_server, "wrong"))
    with pytest.raises(psycopg.OperationalError) as caught:
        await psycopg.AsyncConnection.connect(harness.pg_dsn("e1001"))
    assert "database behind the broker is unavailable" in str(caught.value)
    assert "password" not in str(caught.value).lower().replace("password authentication", "")
