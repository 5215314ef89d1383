"""Row caps on writes, through the broker against the real PostgreSQL.

A clerk (BR001, per-statement cap 100) may update and delete their own branch's
waybills, but never more than 100 rows in one statement: over the cap the database
itself fails the statement (broker/pg/sql_write_cap.py), nothing is changed, and the
client sees the broker's 42501 [bulk.over_cap]. Checked directly in the database.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.harness import Harness
from tests.pg_fixtures import BRANCH_ROWS, direct

pytestmark = pytest.mark.timeout(60)

CLERK = "e1004"  # clerk, BR001: cap 100
CAP = 100


@pytest.fixture
def extra_rows(pg_database: str) -> Iterator[Any]:
    """Adds n rows with status 'cap_test' to BR001; they are gone again after the test."""

    def add(n: int) -> None:
        with direct(pg_database) as admin:
            admin.execute(
                "INSERT INTO waybills (waybill_no, branch_code, sender_phone, status) "
                "SELECT 'CAP-' || g, 'BR001', '1390000' || g, 'cap_test' FROM generate_series(1, %s) g",
                (n,),
            )

    yield add
    with direct(pg_database) as admin:
        admin.execute("DELETE FROM waybills WHERE waybill_no LIKE 'CAP-%' OR waybill_no LIKE 'INS-%'")
        admin.execute("UPDATE waybills SET status = 'in_transit' WHERE status = 'held'")


def _count(pg_database: str, where: str) -> int:
    with direct(pg_database) as admin:
        (n,) = admin.execute(f"SELECT count(*) FROM waybills WHERE {where}").fetchone()
        return int(n)


async def _connect(harness: Harness) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(harness.pg_dsn(CLERK), autocommit=True)


def _over_cap(error: psycopg.Error) -> None:
    assert error.sqlstate == "42501", error
    assert "bulk.over_cap" in str(error) and "nothing was changed" in str(error)
    assert error.diag.message_hint


async def test_a_delete_over_the_cap_is_refused_and_deletes_nothing(pg_broker: Harness, pg_database: str) -> None:
    conn = await _connect(pg_broker)
    with pytest.raises(psycopg.Error) as caught:
        await conn.execute("DELETE FROM waybills WHERE status <> 'no such status'")  # 120 rows of BR001
    _over_cap(caught.value)
    assert _count(pg_database, "branch_code = 'BR001'") == BRANCH_ROWS["BR001"]
    cur = await conn.execute("SELECT count(*) FROM waybills")  # the session goes on
    assert await cur.fetchall() == [(BRANCH_ROWS["BR001"],)]
    await conn.close()


async def test_an_update_over_the_cap_is_refused_and_changes_nothing(pg_broker: Harness, pg_database: str) -> None:
    conn = await _connect(pg_broker)
    with pytest.raises(psycopg.Error) as caught:
        await conn.execute("UPDATE waybills SET status = 'held'")
    _over_cap(caught.value)
    assert _count(pg_database, "status = 'held'") == 0
    with pytest.raises(psycopg.Error) as caught:  # the extended protocol: the same guard
        await conn.execute("UPDATE waybills SET status = %s WHERE id > %s", ("held", 0))
    _over_cap(caught.value)
    assert _count(pg_database, "status = 'held'") == 0
    await conn.close()


async def test_a_delete_at_the_cap_runs_and_one_over_it_does_not(
    pg_broker: Harness, pg_database: str, extra_rows: Any
) -> None:
    extra_rows(CAP)
    conn = await _connect(pg_broker)
    cur = await conn.execute("DELETE FROM waybills WHERE status = 'cap_test'")
    assert cur.rowcount == CAP
    assert _count(pg_database, "status = 'cap_test'") == 0
    extra_rows(CAP + 1)
    with pytest.raises(psycopg.Error) as caught:
        await conn.execute("DELETE FROM waybills WHERE status = %s", ("cap_test",))
    _over_cap(caught.value)
    assert _count(pg_database, "status = 'cap_test'") == CAP + 1
    await conn.close()


async def test_only_the_own_branchs_rows_count_toward_the_cap(pg_broker: Harness, pg_database: str) -> None:
    """160 waybills are in transit over all branches, 80 of them in BR001: under the cap."""
    assert _count(pg_database, "status = 'in_transit'") > CAP
    conn = await _connect(pg_broker)
    cur = await conn.execute("UPDATE waybills SET status = 'held' WHERE status = 'in_transit'")
    assert cur.rowcount == _count(pg_database, "status = 'held'") == 80
    assert _count(pg_database, "status = 'held' AND branch_code <> 'BR001'") == 0
    await conn.execute("UPDATE waybills SET status = 'in_transit' WHERE status = 'held'")
    await conn.close()


async def test_an_over_cap_write_inside_a_transaction_aborts_it(pg_broker: Harness, pg_database: str) -> None:
    conn = await _connect(pg_broker)
    with pytest.raises(psycopg.Error) as caught:
        async with conn.transaction():
            await conn.execute("UPDATE waybills SET status = 'held' WHERE waybill_no = 'BR001-1'")
            await conn.execute("DELETE FROM waybills")
    _over_cap(caught.value)
    assert _count(pg_database, "status = 'held'") == 0  # the first UPDATE was rolled back too
    assert _count(pg_database, "branch_code = 'BR001'") == BRANCH_ROWS["BR001"]
    await conn.close()


async def test_an_insert_of_more_rows_than_the_cap_is_refused(
    pg_broker: Harness, pg_database: str, extra_rows: Any
) -> None:
    conn = await _connect(pg_broker)
    values = ", ".join(f"('INS-{n}', 'BR001')" for n in range(CAP + 1))
    with pytest.raises(psycopg.Error) as caught:
        await conn.execute(f"INSERT INTO waybills (waybill_no, branch_code) VALUES {values}")
    assert caught.value.sqlstate == "42501" and "bulk.over_cap" in str(caught.value)
    assert _count(pg_database, "waybill_no LIKE 'INS-%'") == 0
    values = ", ".join(f"('INS-{n}', 'BR001')" for n in range(CAP))
    cur = await conn.execute(f"INSERT INTO waybills (waybill_no, branch_code) VALUES {values}")
    assert cur.rowcount == CAP
    await conn.close()


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE waybills w SET sender_name = x.sender_phone FROM waybills x WHERE x.id = w.id + 1",
        "UPDATE waybills w SET sender_address = concat(w.sender_address, "
        "(SELECT x.sender_phone FROM waybills x WHERE x.id = w.id + 1)) WHERE w.id < 30",
    ],
)
async def test_an_update_may_not_fold_other_records_into_a_row(pg_broker: Harness, pg_database: str, sql: str) -> None:
    """Packing by writing: copy other records' phone numbers into one row, then read it."""
    conn = await _connect(pg_broker)
    with pytest.raises(psycopg.Error) as caught:
        await conn.execute(sql)
    assert caught.value.sqlstate == "42501" and "personal data" in str(caught.value)
    assert _count(pg_database, "sender_name LIKE '138%' OR sender_address LIKE '%138%'") == 0
    await conn.close()
