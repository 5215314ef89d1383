"""deploy/compose.yaml's PostgreSQL door, as the stack would bring it up: the postgres
image's init script (deploy/postgres/initdb.sh) run against a fresh database on a private
cluster that demands passwords, then the broker with the compose file's own settings for
the door. The broker must open the door with the login the script made (no superuser,
owns nothing), and an employee must see their branch's rows only."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import yaml

from tests.conftest import BrokerFactory
from tests.harness import routable_address
from tests.pg_cluster import pg_binary, scram_cluster

REPO = Path(__file__).resolve().parents[2]
INIT = ["sh", str(REPO / "deploy" / "postgres" / "initdb.sh")]
ADMIN_PASSWORD = "compose-admin-password-51c2"
pytestmark = pytest.mark.timeout(120)


def _compose() -> dict[str, dict[str, str]]:
    services = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())["services"]
    return {"postgres": services["postgres"]["environment"], "broker": services["broker"]["environment"]}


@pytest.fixture(scope="module")
def initialised() -> Iterator[int]:
    """A cluster whose `logistics` database initdb.sh has set up, as the image would."""
    home = Path(tempfile.mkdtemp(prefix="broker-compose-pg-"))
    try:
        for port in scram_cluster(home, ADMIN_PASSWORD):
            database = _compose()["postgres"]
            env = {
                **os.environ,
                "PGHOST": "127.0.0.1",
                "PGPORT": str(port),
                "PGPASSWORD": ADMIN_PASSWORD,
                "POSTGRES_USER": "postgres",
                "POSTGRES_DB": database["POSTGRES_DB"],
                "BROKER_DOOR_USER": database["BROKER_DOOR_USER"],
                "BROKER_DOOR_PASSWORD": database["BROKER_DOOR_PASSWORD"],
                "PATH": f"{Path(pg_binary('psql')).parent}:{os.environ['PATH']}",
            }
            createdb = [pg_binary("createdb"), "-U", "postgres", database["POSTGRES_DB"]]
            subprocess.run(createdb, env=env, check=True, capture_output=True, timeout=60)
            done = subprocess.run(INIT, env=env, capture_output=True, text=True, check=False, timeout=60)
            assert done.returncode == 0, done.stderr
            yield port
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _door(port: int) -> dict[str, object]:
    broker = _compose()["broker"]
    return {
        "enabled": True,
        "port": 0,
        "server_port": port,
        "server_database": broker["BROKER_POSTGRES_SERVER_DATABASE"],
        "server_user": broker["BROKER_POSTGRES_SERVER_USER"],
        "server_password": broker["BROKER_POSTGRES_SERVER_PASSWORD"],
    }


async def test_the_compose_database_opens_the_door_and_an_employee_reads_their_branch_only(
    make_broker: BrokerFactory, initialised: int
) -> None:
    harness = await make_broker(postgres=_door(initialised))
    conn = await psycopg.AsyncConnection.connect(harness.pg_dsn("e1001"), autocommit=True)
    try:
        cur = await conn.execute("SELECT waybill_no, branch_code FROM waybills ORDER BY id LIMIT 20")
        rows = await cur.fetchall()
        assert len(rows) == 20 and {branch for _, branch in rows} == {"BR001"}
        # another branch's rows are there (below), but the door scopes every read to e1001's branch
        cur = await conn.execute("SELECT waybill_no FROM waybills WHERE branch_code = 'BR002' LIMIT 5")
        assert await cur.fetchall() == []
    finally:
        await conn.close()
    admin = f"host=127.0.0.1 port={initialised} user=postgres password={ADMIN_PASSWORD} dbname=logistics"
    with psycopg.connect(admin) as direct:
        branches = direct.execute("SELECT count(DISTINCT branch_code) FROM waybills").fetchone()
        role = direct.execute(
            "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = %s",
            (_compose()["broker"]["BROKER_POSTGRES_SERVER_USER"],),
        ).fetchone()
    assert branches == (4,) and role == (False, False)  # others' rows are there; the login is plain


def test_the_init_script_refuses_to_run_without_the_door_password(initialised: int) -> None:
    env = {**os.environ, "POSTGRES_USER": "postgres", "POSTGRES_DB": "logistics"}
    env.pop("BROKER_DOOR_PASSWORD", None)
    done = subprocess.run(INIT, env=env, capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode != 0 and "BROKER_DOOR_PASSWORD" in done.stderr


def test_the_door_login_itself_can_change_rows_and_nothing_else(initialised: int) -> None:
    """Straight to the database as the broker's own login (not through the door): what a
    door bug, or a leaked door password, could do with it."""
    database = _compose()["postgres"]
    door = (
        f"host=127.0.0.1 port={initialised} dbname={database['POSTGRES_DB']} "
        f"user={database['BROKER_DOOR_USER']} password={database['BROKER_DOOR_PASSWORD']}"
    )
    refused = {
        "CREATE TEMP TABLE stash (x int)": "permission denied to create temporary tables",
        "CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'SELECT 1'": "permission denied",
        "SELECT last_value FROM waybills_id_seq": "permission denied for sequence waybills_id_seq",
        "SELECT lo_from_bytea(0, 'x')": "permission denied for function lo_from_bytea",
        "SELECT lo_create(0)": "permission denied for function lo_create",
        "SELECT lo_get(1)": "permission denied for function lo_get",
    }
    with psycopg.connect(door, autocommit=True) as conn:
        for statement, message in refused.items():
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match=message):
                conn.execute(statement.encode())
        callable_lo = conn.execute(
            "SELECT p.oid::regprocedure::text FROM pg_proc p WHERE p.pronamespace = 'pg_catalog'::regnamespace "
            "AND (p.proname LIKE 'lo\\_%' OR p.proname IN ('loread', 'lowrite')) "
            "AND has_function_privilege(p.oid, 'EXECUTE')"
        ).fetchall()
        assert callable_lo == []  # every overload, not only the ones tried above
        with conn.transaction(force_rollback=True):  # the serial default's nextval needs USAGE, which it has
            row = conn.execute(
                "INSERT INTO waybills (waybill_no, branch_code) VALUES ('SF-DOOR-TEST', 'BR001') RETURNING id"
            ).fetchone()
            assert row is not None and row[0] > 1000
            assert conn.execute("SELECT currval('waybills_id_seq')").fetchone() == row


async def test_with_the_certs_services_certificate_a_client_off_loopback_logs_in_over_tls(
    make_broker: BrokerFactory, initialised: int, tmp_path: Path
) -> None:
    """What `psql "host=localhost port=6432 sslmode=require ..."` on the host meets: a peer
    that is not loopback, and the door with the certificate `broker dev-cert` wrote, as the
    compose file's certs service runs it."""
    address = routable_address()
    if address is None:
        pytest.fail("this test needs a non-loopback IPv4 address on the machine")
    services = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())["services"]
    command = services["certs"]["entrypoint"]
    out = tmp_path / "tls"
    argv = [sys.executable, "-m", "broker", *command[1:]]
    argv[argv.index("--out") + 1] = str(out)
    process = await asyncio.create_subprocess_exec(*argv, stderr=asyncio.subprocess.PIPE)
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    environment = services["broker"]["environment"]
    cert = out / Path(environment["BROKER_POSTGRES_TLS_CERT_FILE"]).name
    key = out / Path(environment["BROKER_POSTGRES_TLS_KEY_FILE"]).name
    door = {**_door(initialised), "host": environment["BROKER_POSTGRES_HOST"]}
    harness = await make_broker(postgres={**door, "tls_cert_file": cert, "tls_key_file": key})
    with pytest.raises(psycopg.OperationalError, match="only over TLS"):
        await psycopg.AsyncConnection.connect(harness.pg_dsn("e1001", host=address, sslmode="disable"))
    conn = await psycopg.AsyncConnection.connect(harness.pg_dsn("e1001", host=address, sslmode="require"))
    try:
        assert conn.info.pgconn.ssl_in_use
        cur = await conn.execute("SELECT branch_code FROM waybills LIMIT 10")
        assert {branch for (branch,) in await cur.fetchall()} == {"BR001"}
    finally:
        await conn.close()
