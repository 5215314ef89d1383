"""deploy/compose.yaml's PostgreSQL door, as the stack would bring it up: the postgres
image's init script (deploy/postgres/initdb.sh) run against a fresh database on a private
cluster that demands passwords, then the broker with the compose file's own settings for
the door. The broker must open the door with the login the script made (no superuser,
owns nothing), and an employee must see their branch's rows only."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import yaml

from tests.conftest import BrokerFactory
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
