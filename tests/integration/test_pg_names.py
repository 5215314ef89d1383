"""Issue #13, "the server is the source of truth": statement and portal names are the
broker's at the server, and what a name holds changes only on the server's word. Each test
is an insider's attempt to make the broker decide one statement while the server runs
another, spoken with raw protocol messages over a real socket to a real PostgreSQL."""

from __future__ import annotations

import psycopg
import pytest

from broker.pg.wire import execute, message
from tests.harness import Harness
from tests.pg_client import RawClient, bind, errors, kinds, parse, query, sync

pytestmark = pytest.mark.timeout(60)

CAPPED = "SELECT id, branch_code FROM waybills ORDER BY id LIMIT $1"
"""Bound by its parameter: Bind(..., '100000') is over every role's cap."""


async def logged_in(harness: Harness, employee: str = "e1001") -> RawClient:
    client = await RawClient.open(harness.pg_port)
    await client.login(harness, employee)
    return client


async def used(harness: Harness, employee: str) -> int:
    me = (await harness.get("/-/me", employee)).json
    return int(me["quotas"][0]["used"])


async def test_a_server_error_names_the_clients_statement_not_the_brokers(pg_broker: Harness) -> None:
    """The server only knows the broker's names; its errors must not confuse the client."""
    client = await logged_in(pg_broker)
    client.writer.write(parse("mine", "SELECT id FROM waybills WHERE id = $1 LIMIT 1") + sync())
    assert kinds(await client.until(b"Z")) == b"1Z"
    client.writer.write(bind("p", "mine") + execute("p") + sync())  # no parameter for $1
    found = errors(await client.until(b"Z"))
    assert [e["C"] for e in found] == ["08P01"]
    assert '"mine"' in found[0]["M"] and "bk_" not in found[0]["M"], found[0]["M"]
    await client.close()


async def test_guessing_the_brokers_names_reaches_nothing(pg_broker: Harness) -> None:
    """Client names never reach the server: a client naming the broker's server names
    (bk_s1, bk_p1, the refusal portal) names objects of its own, which do not exist."""
    client = await logged_in(pg_broker)
    client.writer.write(query("BEGIN"))
    await client.until(b"Z")
    client.writer.write(parse("", "SELECT id FROM waybills ORDER BY id LIMIT 5") + bind("", "") + sync())
    assert kinds(await client.until(b"Z")) == b"12Z"  # the server now holds bk_s1 and bk_p1 (or so)
    for number in range(1, 4):
        client.writer.write(execute(f"bk_p{number}") + sync())
        seen = await client.until(b"Z")
        assert b"D" not in kinds(seen) and [e["C"] for e in errors(seen)] == ["34000"]
        client.writer.write(query("ROLLBACK") + query("BEGIN"))
        await client.until(b"Z")
        await client.until(b"Z")
        client.writer.write(bind("", f"bk_s{number}") + execute("") + sync())
        seen = await client.until(b"Z")
        assert b"D" not in kinds(seen) and [e["C"] for e in errors(seen)] == ["26000"]
        client.writer.write(query("ROLLBACK") + query("BEGIN"))
        await client.until(b"Z")
        await client.until(b"Z")
    client.writer.write(query(f"DEALLOCATE bk_s{1}"))
    found = errors(await client.until(b"Z"))
    assert [e["C"] for e in found] == ["26000"] and '"bk_s1"' in found[0]["M"]  # the client's own name
    await client.close()


async def test_a_skipped_parse_of_the_unnamed_statement_cannot_swap_it(pg_broker: Harness) -> None:
    """The unnamed statement: the server keeps the old one when it skips a Parse after an
    error. A Bind pipelined behind the Sync was decided as the new text (table-free) and
    ran the old one (a branch read bound by $1): 120 rows, uncounted, uncharged."""
    client = await logged_in(pg_broker)
    client.writer.write(parse("", CAPPED) + parse("boom", "SELECT 1/0") + sync())
    assert kinds(await client.until(b"Z")) == b"11Z"
    client.writer.write(
        bind("", "boom")
        + execute("")  # fails at the server: the rest is skipped up to the Sync
        + parse("", "SELECT 1")  # skipped: the unnamed statement is still CAPPED there
        + sync()
        + bind("", "", "100000")
        + execute("")
        + sync()
    )
    assert [e["C"] for e in errors(await client.until(b"Z"))] == ["22012"]
    seen = await client.until(b"Z")
    assert b"D" not in kinds(seen), f"{kinds(seen).count(b'D')} rows of an undecided statement"
    assert errors(seen) and errors(seen)[0]["C"] in ("26000", "08P01")
    assert await used(pg_broker, "e1001") == 0
    await client.close()


async def test_a_query_the_server_skipped_does_not_shift_answers_onto_other_statements(pg_broker: Harness) -> None:
    """After an extended-protocol error the server skips everything up to Sync, a simple
    Query too. A broker that expected an answer to that Query attributed every later
    answer to the statement before it: reads of 20 were charged as a `SELECT 1` (nothing)."""
    client = await logged_in(pg_broker, "e1003")  # trainee: cap 20, quota 60
    client.writer.write(parse("boom", "SELECT 1/0") + sync())
    await client.until(b"Z")
    client.writer.write(bind("", "boom") + execute("") + query("SELECT id FROM waybills LIMIT 10") + sync())
    seen = await client.until(b"Z")
    assert [e["C"] for e in errors(seen)] == ["22012"] and b"D" not in kinds(seen)
    read = "SELECT id, sender_phone FROM waybills ORDER BY id LIMIT 20"
    for _ in range(3):
        client.writer.write(query("SELECT 1"))
        assert kinds(await client.until(b"Z")) == b"TDCZ"
        client.writer.write(query(read))
        seen = await client.until(b"Z")
        assert kinds(seen).count(b"D") == 20 and not errors(seen)
    assert await used(pg_broker, "e1003") == 60
    client.writer.write(query(read))
    seen = await client.until(b"Z")
    assert b"D" not in kinds(seen)
    assert [e["C"] for e in errors(seen)] == ["53400"] and "quota.exceeded" in errors(seen)[0]["M"]
    await client.close()


@pytest.mark.parametrize("deallocate", ["DEALLOCATE d1", "DEALLOCATE PREPARE d1", "DEALLOCATE ALL"])
async def test_a_deallocate_in_an_aborted_transaction_keeps_the_statement(pg_broker: Harness, deallocate: str) -> None:
    """The server refuses DEALLOCATE in an aborted transaction (25P02) and keeps d1; the
    broker must keep deciding Binds of d1 as the statement it is."""
    client = await logged_in(pg_broker)
    client.writer.write(parse("d1", CAPPED) + sync())
    assert kinds(await client.until(b"Z")) == b"1Z"
    for sql in ("BEGIN", "SELECT 1/0", deallocate, "ROLLBACK"):
        client.writer.write(query(sql))
        seen = await client.until(b"Z")
    client.writer.write(parse("d1", "SELECT 1") + sync())
    assert [e["C"] for e in errors(await client.until(b"Z"))] == ["42P05"]  # as the server would say
    client.writer.write(bind("", "d1", "100000") + execute("") + sync())
    seen = await client.until(b"Z")
    assert b"D" not in kinds(seen)
    assert [e["C"] for e in errors(seen)] == ["42501"] and "bulk.over_cap" in errors(seen)[0]["M"]
    client.writer.write(bind("", "d1", "3") + execute("") + sync())
    assert kinds(await client.until(b"Z")) == b"2DDDCZ"  # and it still runs as itself
    await client.close()


async def test_a_deallocate_after_an_error_in_the_same_query_keeps_the_statement(pg_broker: Harness) -> None:
    client = await logged_in(pg_broker)
    client.writer.write(parse("d1", CAPPED) + sync())
    await client.until(b"Z")
    client.writer.write(query("SELECT 1/0; DEALLOCATE d1"))
    assert [e["C"] for e in errors(await client.until(b"Z"))] == ["22012"]
    client.writer.write(bind("", "d1", "2") + execute("") + sync())
    assert kinds(await client.until(b"Z")) == b"2DDCZ"
    client.writer.write(query("DEALLOCATE d1"))  # this time it runs: d1 is gone, and free again
    assert kinds(await client.until(b"Z")) == b"CZ"
    client.writer.write(bind("", "d1", "2") + execute("") + sync())
    assert [e["C"] for e in errors(await client.until(b"Z"))] == ["26000"]
    client.writer.write(parse("d1", "SELECT 1") + bind("", "d1") + execute("") + sync())
    assert kinds(await client.until(b"Z")) == b"12DCZ"
    await client.close()


async def test_a_close_is_believed_only_when_the_server_confirms_it(pg_broker: Harness) -> None:
    """A Close the server skips (an error earlier in the batch) leaves the statement there;
    a Close it confirms frees the name."""
    client = await logged_in(pg_broker)
    client.writer.write(parse("d1", CAPPED) + parse("boom", "SELECT 1/0") + sync())
    await client.until(b"Z")
    close_d1 = message(b"C", b"S" + b"d1\x00")
    client.writer.write(bind("", "boom") + execute("") + close_d1 + sync())
    assert [e["C"] for e in errors(await client.until(b"Z"))] == ["22012"]
    client.writer.write(bind("", "d1", "1") + execute("") + sync())
    assert kinds(await client.until(b"Z")) == b"2DCZ"  # still there
    client.writer.write(close_d1 + sync())
    assert kinds(await client.until(b"Z")) == b"3Z"
    client.writer.write(bind("", "d1", "1") + execute("") + sync())
    assert [e["C"] for e in errors(await client.until(b"Z"))] == ["26000"]
    await client.close()


async def test_a_named_portal_cannot_be_bound_twice_in_a_transaction(pg_broker: Harness) -> None:
    client = await logged_in(pg_broker)
    client.writer.write(query("BEGIN"))
    await client.until(b"Z")
    client.writer.write(parse("s", "SELECT id FROM waybills ORDER BY id LIMIT 4") + bind("p", "s") + sync())
    assert kinds(await client.until(b"Z")) == b"12Z"
    client.writer.write(bind("p", "s") + sync())
    assert [e["C"] for e in errors(await client.until(b"Z"))] == ["42P03"]
    client.writer.write(query("ROLLBACK"))
    await client.until(b"Z")
    client.writer.write(bind("p", "s") + execute("p") + sync())  # the transaction ended: p is free again
    assert kinds(await client.until(b"Z")) == b"2DDDDCZ"
    await client.close()


@pytest.mark.parametrize(
    "sql",
    [
        "PREPARE x AS SELECT id FROM waybills",
        "EXECUTE x",
        "DECLARE c CURSOR FOR SELECT id FROM waybills",
        "FETCH 100 FROM c",
        "MOVE 10 IN c",
        "CLOSE c",
        "CLOSE ALL",
    ],
)
async def test_sql_level_prepared_statements_and_cursors_are_refused(pg_broker: Harness, sql: str) -> None:
    """Names inside SQL text are not mapped: the broker refuses these (see broker.pg.names)."""
    conn = await psycopg.AsyncConnection.connect(pg_broker.pg_dsn("e1001"), autocommit=True)
    with pytest.raises(psycopg.Error) as caught:
        await conn.execute(sql)
    assert caught.value.sqlstate == "42501" and "the broker does not run" in str(caught.value)
    assert caught.value.diag.message_hint
    cur = await conn.execute("SELECT 1")
    assert await cur.fetchall() == [(1,)]
    await conn.close()


async def test_drivers_use_the_unnamed_and_named_statements_as_before(pg_broker: Harness) -> None:
    """psycopg's unnamed statements (one per query: each replaces the last) and named ones."""
    conn = await psycopg.AsyncConnection.connect(pg_broker.pg_dsn("e1001"), autocommit=True)
    for limit in range(1, 9):
        cur = await conn.execute("SELECT id FROM waybills ORDER BY id LIMIT %s", (limit,))
        assert len(await cur.fetchall()) == limit
    statement = "SELECT id FROM waybills ORDER BY id LIMIT %s"
    for limit in (1, 2):
        cur = await conn.execute(statement, (limit,), prepare=True)  # a named statement, Parsed once
        assert len(await cur.fetchall()) == limit
    await conn.close()


async def test_a_portal_close_the_server_skipped_cannot_swap_the_portal(pg_broker: Harness) -> None:
    """Inside a savepoint the transaction survives an error, and so does a portal made
    before it. A Close of that portal the server skipped, then a Bind of the same name to
    `SELECT 1` (refused by the server, 42P03): a broker that believed both counted the old
    portal's waybill rows against `SELECT 1`, with no cap and no quota."""
    client = await logged_in(pg_broker, "e1003")  # trainee: cap 20, quota 60
    client.writer.write(parse("read", "SELECT id, sender_phone FROM waybills ORDER BY id LIMIT 20"))
    client.writer.write(parse("one", "SELECT 1") + parse("boom", "SELECT 1/0") + sync())
    assert kinds(await client.until(b"Z")) == b"111Z"
    client.writer.write(query("BEGIN"))
    await client.until(b"Z")
    client.writer.write(bind("p", "read") + execute("p", 1) + sync())
    assert kinds(await client.until(b"Z")) == b"2DsZ"
    client.writer.write(query("SAVEPOINT s"))
    await client.until(b"Z")
    close_p = message(b"C", b"P" + b"p\x00")
    client.writer.write(bind("", "boom") + execute("") + close_p + sync())
    assert [e["C"] for e in errors(await client.until(b"Z"))] == ["22012"]
    client.writer.write(query("ROLLBACK TO SAVEPOINT s"))
    await client.until(b"Z")
    client.writer.write(query("SAVEPOINT t"))
    await client.until(b"Z")
    client.writer.write(bind("p", "one") + sync())
    assert [e["C"] for e in errors(await client.until(b"Z"))] == ["42P03"]  # p is still the read
    client.writer.write(query("ROLLBACK TO SAVEPOINT t"))
    await client.until(b"Z")
    client.writer.write(execute("p") + sync())
    seen = await client.until(b"Z")
    assert kinds(seen).count(b"D") == 19 and not errors(seen)
    client.writer.write(query("COMMIT"))
    await client.until(b"Z")
    assert await used(pg_broker, "e1003") == 20  # every row charged to the read that sent it
    await client.close()


async def test_a_bind_the_server_skipped_leaves_no_portal(pg_broker: Harness) -> None:
    client = await logged_in(pg_broker)
    client.writer.write(parse("d1", CAPPED) + parse("boom", "SELECT 1/0") + sync())
    await client.until(b"Z")
    client.writer.write(bind("", "boom") + execute("") + bind("p", "d1", "3") + sync() + execute("p") + sync())
    assert [e["C"] for e in errors(await client.until(b"Z"))] == ["22012"]
    seen = await client.until(b"Z")
    assert b"D" not in kinds(seen)
    found = errors(seen)
    assert [e["C"] for e in found] == ["34000"] and '"p"' in found[0]["M"] and "bk_" not in found[0]["M"]
    await client.close()


async def test_a_simple_query_drops_the_unnamed_statement_and_portal_as_postgresql_does(pg_broker: Harness) -> None:
    client = await logged_in(pg_broker)
    client.writer.write(parse("", "SELECT 1") + bind("", "") + sync())
    assert kinds(await client.until(b"Z")) == b"12Z"
    client.writer.write(query("SELECT 2"))
    assert kinds(await client.until(b"Z")) == b"TDCZ"  # the closes before it are the broker's, unseen
    client.writer.write(bind("", "") + execute("") + sync())
    found = errors(await client.until(b"Z"))
    assert [e["C"] for e in found] == ["26000"] and found[0]["M"] == "unnamed prepared statement does not exist"
    client.writer.write(query("BEGIN"))
    await client.until(b"Z")
    client.writer.write(parse("", "SELECT 1") + bind("", "") + sync() + query("SELECT 3") + execute("") + sync())
    assert kinds(await client.until(b"Z")) == b"12Z"
    assert kinds(await client.until(b"Z")) == b"TDCZ"
    found = errors(await client.until(b"Z"))
    assert [e["C"] for e in found] == ["34000"]  # the unnamed portal went with the Query
    await client.close()
