"""Ways out for data that is not a counted row (adversarial review of the PostgreSQL door):
server error and notice texts, planner output, and catalog lookups hidden in type names.
Each was shown to carry phone numbers, plans or table layouts past the row count."""

from __future__ import annotations

import struct

import psycopg
import pytest

from broker.signals.act import set_frozen
from tests.harness import Harness
from tests.pg_client import RawClient, sqlstate


async def connect(broker: Harness, employee: str = "e1001") -> psycopg.AsyncConnection[tuple[object, ...]]:
    return await psycopg.AsyncConnection.connect(broker.pg_dsn(employee), autocommit=True)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT ('\"' || sender_phone || '\"=r/x')::aclitem FROM waybills WHERE id = 1 LIMIT 1",
        "SELECT id FROM waybills WHERE (sender_phone || ' &')::tsquery IS NULL LIMIT 1",
        "SELECT sender_phone::tsvector FROM waybills LIMIT 1",
        "SELECT sender_phone::jsonpath FROM waybills LIMIT 1",
        "SELECT (NULL::all_waybills).* LIMIT 1",
        "SELECT (NULL::pg_catalog.pg_authid).* LIMIT 1",
        "SELECT NULL::no_such_table LIMIT 1",
        "SELECT 'postgres=r/postgres'::aclitem LIMIT 1",
    ],
)
async def test_casts_to_anything_but_plain_value_types_are_refused(pg_broker: Harness, sql: str) -> None:
    async with await connect(pg_broker) as conn:
        with pytest.raises(psycopg.Error) as caught:
            await conn.execute(sql)
    assert caught.value.sqlstate == "42501", caught.value
    assert "only to plain value types" in str(caught.value) and "13800" not in str(caught.value)


@pytest.mark.parametrize(
    ("sql", "code"),
    [
        ("SELECT sender_phone::int FROM waybills WHERE id = 1 LIMIT 1", "22003"),  # out of range, quoting it
        ("SELECT sender_name::date FROM waybills WHERE id = 1 LIMIT 1", "22007"),
        ("SELECT CASE WHEN true THEN sender_phone ELSE 1 END FROM waybills LIMIT 1", "42804"),
    ],
)
async def test_server_errors_reach_the_client_in_the_brokers_words(pg_broker: Harness, sql: str, code: str) -> None:
    async with await connect(pg_broker) as conn:
        with pytest.raises(psycopg.Error) as caught:
            await conn.execute(sql)
    assert caught.value.sqlstate == code
    text = str(caught.value)
    assert f"SQLSTATE {code}" in text and "13800" not in text and "Sender" not in text
    assert caught.value.diag.message_detail is None


async def test_an_unknown_table_keeps_the_servers_words(pg_broker: Harness) -> None:
    """Names from the client's own statement carry no data: the developer still sees them."""
    async with await connect(pg_broker) as conn:
        with pytest.raises(psycopg.Error) as caught:
            await conn.execute("SELECT nope FROM waybills LIMIT 1")
    assert caught.value.sqlstate == "42703" and 'column "nope" does not exist' in str(caught.value)


@pytest.mark.parametrize(
    "setting",
    ["debug_print_plan = on", "client_min_messages = log", "work_mem = '2GB'", "jit = on", "enable_seqscan = off"],
)
async def test_settings_beyond_the_ordinary_ones_are_refused(pg_broker: Harness, setting: str) -> None:
    async with await connect(pg_broker) as conn:
        with pytest.raises(psycopg.Error) as caught:
            await conn.execute(f"SET {setting}")
        assert caught.value.sqlstate == "42501" and "may not be changed through the broker" in str(caught.value)
        await conn.execute("SET application_name = 'scanner-7'")  # the ordinary ones still work
        await conn.execute("SET TIME ZONE 'Asia/Shanghai'")


async def test_a_huge_query_is_refused_on_its_header_before_its_body_is_held(pg_broker: Harness) -> None:
    """A 60 MB Query (the statement limit is 256 KiB) is refused as soon as its length is
    read: the broker answers FATAL after 1 MB has been sent, holding none of the rest."""
    client = await RawClient.open(pg_broker.pg_port)
    try:
        await client.login(pg_broker)
        declared = 60 << 20
        client.writer.write(b"Q" + struct.pack("!I", declared) + b"SELECT 1 /*" + b"x" * (1 << 20))
        await client.writer.drain()
        kind, raw = await client.next()
        assert kind == b"E" and sqlstate(raw) == "08P01"
        assert b"the limit is" in raw
    finally:
        await client.close()


async def test_a_frozen_employee_is_refused_on_the_postgresql_door_too(pg_broker: Harness) -> None:
    async with await connect(pg_broker) as conn:
        await conn.execute("SELECT waybill_no FROM waybills LIMIT 1")
        await set_frozen(pg_broker.broker.meter, "e1001", True, pg_broker.clock.now())
        with pytest.raises(psycopg.Error) as caught:
            await conn.execute("SELECT waybill_no FROM waybills LIMIT 1")
    assert caught.value.sqlstate == "28000" and "help desk" in str(caught.value)
