"""The door refuses to open with a database login more powerful than the broker (#13)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import psycopg
import pytest

from broker.pg.privilege import LoginTooPowerful
from tests.conftest import BrokerFactory
from tests.harness import door_settings
from tests.pg_fixtures import direct

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
