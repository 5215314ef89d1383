"""The door refuses to open with a database login more powerful than the broker (#13)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator

import asyncpg
import psycopg
import pytest

from broker.pg.privilege import LoginTooPowerful
from tests.conftest import BrokerFactory
from tests.harness import door_settings
from tests.pg_fixtures import direct
from tests.redis_fixtures import free_port

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def ordinary_role(pg_database: str) -> Iterator[str]:
    """A login role with rights on the seeded tables and nothing more."""
    name = f"broker_role_{secrets.token_hex(4)}"
    with direct(pg_database) as admin:
        admin.execute(f"CREATE ROLE {name} LOGIN")
        admin.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {name}")
        admin.execute(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {name}")
    yield name
    with direct(pg_database) as admin:
        admin.execute(f"DROP OWNED BY {name}")
        admin.execute(f"DROP ROLE {name}")


async def test_a_superuser_login_is_refused_at_start(make_broker: BrokerFactory, pg_database: str) -> None:
    with pytest.raises(LoginTooPowerful) as caught:
        await make_broker(postgres=door_settings(pg_database, allow_superuser=False))
    assert "'postgres' is a superuser" in str(caught.value) and "ordinary role" in str(caught.value)


async def test_a_bypassrls_login_is_refused(make_broker: BrokerFactory, pg_database: str, ordinary_role: str) -> None:
    with direct(pg_database) as admin:
        admin.execute(f"ALTER ROLE {ordinary_role} BYPASSRLS")
    with pytest.raises(LoginTooPowerful) as caught:
        await make_broker(postgres=door_settings(pg_database, server_user=ordinary_role, allow_superuser=False))
    assert "BYPASSRLS" in str(caught.value)


async def test_a_login_owning_a_mapped_table_is_refused(
    make_broker: BrokerFactory, pg_database: str, ordinary_role: str
) -> None:
    with direct(pg_database) as admin:
        admin.execute(f"ALTER TABLE waybills OWNER TO {ordinary_role}")
    with pytest.raises(LoginTooPowerful) as caught:
        await make_broker(postgres=door_settings(pg_database, server_user=ordinary_role, allow_superuser=False))
    assert "owns the mapped table(s) waybills" in str(caught.value)
    with direct(pg_database) as admin:
        admin.execute("ALTER TABLE waybills OWNER TO postgres")


async def test_an_ordinary_login_serves(make_broker: BrokerFactory, pg_database: str, ordinary_role: str) -> None:
    broker = await make_broker(postgres=door_settings(pg_database, server_user=ordinary_role, allow_superuser=False))
    async with await psycopg.AsyncConnection.connect(broker.pg_dsn("e1001"), autocommit=True) as conn:
        cur = await conn.execute("SELECT branch_code FROM waybills ORDER BY id LIMIT 3")
        assert await cur.fetchall() == [("BR001",)] * 3
        assert conn.info.parameter_status("is_superuser") is None


async def _forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def test_a_too_powerful_login_found_at_the_first_session_is_refused_without_naming_it(
    make_broker: BrokerFactory, pg_database: str
) -> None:
    """The database was away when the door opened, so the login is checked at the first
    session: that employee is refused (28000) with a message that names neither the
    login nor what it owns (the operators' business, in the log), and nothing runs."""
    port = free_port()
    broker = await make_broker(
        postgres=door_settings(pg_database, server_port=port, allow_superuser=False, connect_timeout_seconds=1.0)
    )

    async def relay(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", 5432)
        await asyncio.gather(_forward(client_reader, server_writer), _forward(server_reader, client_writer))

    database = await asyncio.start_server(relay, "127.0.0.1", port)  # the database comes back
    try:
        with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError) as caught:
            await asyncpg.connect(
                host="127.0.0.1",
                port=broker.pg_port,
                user="e1001",
                password=broker.token("e1001"),
                database=pg_database,
                ssl=False,
            )
        assert caught.value.sqlstate == "28000"
        message = str(caught.value)
        assert "cannot serve" in message and "operators" in message
        assert "postgres" not in message and "superuser" not in message and "waybills" not in message
    finally:
        database.close()
        await database.wait_closed()
