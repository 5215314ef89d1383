"""The PostgreSQL door's SQL analysis is isolated and bounded (issue #13): a statement that
crashes or stalls the parser costs that statement, never the broker, its other sessions
or the HTTP door."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import psycopg
import pytest

from broker.pg.analyser import SqlAnalyser, analyse_in_worker
from broker.policy.table import TableMap
from tests.conftest import BrokerFactory
from tests.harness import Harness, door_settings

pytestmark = pytest.mark.timeout(90)


async def connect(harness: Harness, employee: str = "e1001") -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(harness.pg_dsn(employee), autocommit=True)


async def refused(conn: psycopg.AsyncConnection[Any], sql: str) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as caught:
        await conn.execute(sql)
    return caught.value


async def usable(conn: psycopg.AsyncConnection[Any]) -> None:
    cur = await conn.execute("SELECT id FROM waybills ORDER BY id LIMIT 2")
    assert len(await cur.fetchall()) == 2


def crash_in_worker(sql: str, tables: TableMap) -> Any:
    """Stands in for a parser that segfaults on `sql` (the 48 kB `1+1+...` did)."""
    if sql.startswith("SELECT 'crash'"):
        os.abort()
    return analyse_in_worker(sql, tables)


async def test_a_statement_that_crashes_the_parser_costs_one_statement(
    make_broker: BrokerFactory, pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # one worker: the statement meets the worker whose start-up imported this module
    pg_broker = await make_broker(postgres=door_settings(pg_database, analysis_workers=1))
    # the worker is spawned: it imports this module again, so the stand-in must be
    # a module-level function it can find by name
    monkeypatch.setattr("broker.pg.analyser.analyse_in_worker", crash_in_worker)
    assert pg_broker.broker.pg is not None
    pg_broker.broker.pg.analyser.close()  # new workers, with the stand-in
    async with await connect(pg_broker) as conn:
        error = await refused(conn, "SELECT 'crash' FROM waybills LIMIT 1")
        assert error.sqlstate == "54001" and "could not be checked" in str(error)
        await usable(conn)
    assert (await pg_broker.get("/-/healthz")).status == 200
    assert pg_broker.broker.pg.analyser.restarts == 2  # it crashed, and crashed again on its second try


async def test_a_deeply_nested_expression_is_refused_and_the_broker_lives(pg_broker: Harness) -> None:
    async with await connect(pg_broker) as conn:
        for terms in (1_500, 24_000):  # RecursionError, then (in-process, before) a segfault
            sql = "SELECT " + "+".join(["1"] * terms) + " FROM waybills LIMIT 1"
            error = await refused(conn, sql)
            assert error.sqlstate in ("54001", "54000"), (terms, error.sqlstate, str(error)[:200])
            await usable(conn)
    assert (await pg_broker.get("/-/healthz")).status == 200


async def test_a_statement_over_the_size_limit_is_refused_with_54000(
    make_broker: BrokerFactory, pg_database: str
) -> None:
    broker = await make_broker(postgres=door_settings(pg_database, max_statement_bytes=4096))
    async with await connect(broker) as conn:
        sql = "SELECT id FROM waybills WHERE id IN (" + ",".join(str(n) for n in range(2000)) + ") LIMIT 5"
        error = await refused(conn, sql)
        assert error.sqlstate == "54000" and "at most 4096" in str(error)
        await usable(conn)


async def test_a_slow_analysis_does_not_hold_other_sessions_or_http(
    make_broker: BrokerFactory, pg_database: str
) -> None:
    broker = await make_broker(
        postgres=door_settings(pg_database, max_statement_bytes=8 << 20, analysis_timeout_seconds=2.0)
    )
    async with await connect(broker) as slow, await connect(broker, "e1004") as other:
        huge = "SELECT id FROM waybills WHERE id IN (" + ",".join(str(n) for n in range(700_000)) + ") LIMIT 5"
        stalled = asyncio.create_task(refused(slow, huge))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        await usable(other)
        assert (await broker.get("/-/healthz")).status == 200
        # held, they would wait out the 2 s analysis; a busy machine is slow, not that slow
        assert time.monotonic() - started < 1.2, "the loop or every worker was held while a statement was analysed"
        error = await stalled
        assert error.sqlstate == "54001" and "within 2 s" in str(error)
        await usable(slow)


async def test_the_statement_cache_is_bounded_in_bytes(pg_broker: Harness) -> None:
    assert pg_broker.broker.pg is not None
    async with await connect(pg_broker) as conn:
        for n in range(100):  # 20 MB of distinct texts
            padding = f"/* {n} " + "x" * 200_000 + " */"
            await conn.execute(f"SELECT id FROM waybills {padding} LIMIT 1")
    cache = pg_broker.broker.pg.services.cache
    assert 0 < cache.held_bytes <= 16 << 20


async def test_analysis_workers_are_replaced_after_a_timeout() -> None:
    analyser = SqlAnalyser(timeout=0.5)
    analyser.start()
    try:
        huge = "SELECT id FROM waybills WHERE id IN (" + ",".join(str(n) for n in range(400_000)) + ")"
        with pytest.raises(Exception) as caught:
            await analyser.analyse(huge, TableMap.empty())
        assert getattr(caught.value, "sqlstate", None) == "54001"
        assert analyser.restarts == 1
        ((statement, _),) = await analyser.analyse("SELECT 1", TableMap.empty())
        assert statement.kind == "select"
    finally:
        analyser.close()
