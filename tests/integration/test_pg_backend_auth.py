"""The broker's own login to the database with SCRAM-SHA-256, against a private PostgreSQL
cluster that demands it (the machine's shared server trusts everyone on loopback)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import BrokerFactory
from tests.redis_fixtures import free_port

PASSWORD = "broker-test-password-7f3a"
pytestmark = pytest.mark.timeout(90)


def _bin(name: str) -> str:
    for found in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(found)
    located = shutil.which(name)
    if located is None:
        pytest.fail(f"{name} is required (apt-get install postgresql)")
    return located


def _as_postgres(command: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


@pytest.fixture(scope="module")
def scram_server() -> Iterator[int]:
    """A private cluster where every login, on every address, needs SCRAM-SHA-256."""
    home = Path(tempfile.mkdtemp(prefix="broker-scram-"))  # not under pytest's root-only tmp
    try:
        yield from _cluster(home)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _cluster(home: Path) -> Iterator[int]:
    data, password_file = home / "data", home / "password"
    password_file.write_text(PASSWORD + "\n")
    if os.geteuid() == 0:
        shutil.chown(home, "postgres")
        shutil.chown(password_file, "postgres")
    initdb = [_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=scram-sha-256", f"--pwfile={password_file}"]
    done = subprocess.run(_as_postgres(initdb), capture_output=True, text=True, check=False)
    if done.returncode:
        pytest.fail(f"initdb failed: {done.stderr.strip()}")
    port = free_port()
    server = subprocess.Popen(
        _as_postgres([_bin("postgres"), "-D", str(data), "-p", str(port), "-k", str(home),
                      "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    dsn = f"host=127.0.0.1 port={port} user=postgres password={PASSWORD} dbname=postgres"
    deadline = time.monotonic() + 30
    while True:
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("CREATE TABLE waybills (id int, branch_code text)")
                conn.execute("INSERT INTO waybills VALUES (1, 'BR001'), (2, 'BR002')")
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail("the private PostgreSQL cluster did not start")
            time.sleep(0.2)
    yield port
    server.terminate()
    server.wait(timeout=30)


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
