"""Packing many records into few rows, tried through the broker against the real PostgreSQL.

The cap and the quota count rows; each shape here packs personal data of many records
into few rows (the issue's pivot: 600 phone numbers in 31 rows, charged 31). The
broker refuses them all (broker/pg/sql_carry.py), and honest counting still works.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.harness import Harness
from tests.pg_fixtures import BRANCH_ROWS, direct

pytestmark = pytest.mark.timeout(60)

PIVOT = (
    "SELECT id / 20, "
    + ", ".join(f"max(CASE WHEN id % 20 = {k} THEN sender_phone END)" for k in range(20))
    + " FROM waybills GROUP BY id / 20 ORDER BY 1 LIMIT 40"
)
FILTERED = (
    "SELECT "
    + ", ".join(f"max(sender_phone) FILTER (WHERE id = {k})" for k in range(1, 131))
    + " FROM waybills LIMIT 1"
)
BITS = (
    "SELECT "
    + ", ".join(
        f"(SELECT count(*) FROM waybills x WHERE x.id = {k} AND x.sender_phone LIKE '%1')" for k in range(1, 60)
    )
    + " LIMIT 1"
)

PACKED = {
    "pivot": PIVOT,
    "filter": FILTERED,
    "lead": "SELECT lead(sender_phone, 1) OVER (ORDER BY id) FROM waybills LIMIT 5",
    "lag": "SELECT lag(sender_phone, 1) OVER (ORDER BY id) FROM waybills LIMIT 5",
    "nth_value": "SELECT nth_value(sender_phone, 2) OVER (ORDER BY id) FROM waybills LIMIT 5",
    "frame": (
        "SELECT max(sender_phone) OVER (ORDER BY id ROWS BETWEEN 1 FOLLOWING AND 1 FOLLOWING) FROM waybills LIMIT 5"
    ),
    "named window": "SELECT rank() OVER w FROM waybills WINDOW w AS (ORDER BY sender_phone) LIMIT 5",
    "field of a whole row": "SELECT (w).sender_phone FROM waybills w LIMIT 5",
    "row as text": "SELECT w::text FROM waybills w LIMIT 5",
    "star as text": "SELECT (w.*)::text FROM waybills w LIMIT 5",
    "row constructor of a row": "SELECT ROW(w.*) FROM waybills w LIMIT 5",
    "row_to_json": "SELECT row_to_json(w) FROM waybills w LIMIT 5",
    "string_agg": "SELECT string_agg(sender_phone, ',') FROM waybills LIMIT 1",
    "array_agg": "SELECT array_agg(sender_phone) FROM waybills LIMIT 1",
    "json_agg": "SELECT json_agg(sender_phone) FROM waybills LIMIT 1",
    "jsonb_agg": "SELECT jsonb_agg(sender_phone) FROM waybills LIMIT 1",
    "json_build_object": "SELECT json_build_object('p', sender_phone) FROM waybills LIMIT 5",
    "JSON_ARRAYAGG": "SELECT JSON_ARRAYAGG(sender_phone) FROM waybills LIMIT 1",
    "xmlagg": "SELECT xmlagg(xmlelement(name p, sender_phone)) FROM waybills LIMIT 1",
    "unnest": "SELECT unnest(ARRAY[sender_phone, recipient_phone]) FROM waybills LIMIT 5",
    "generate_series join": "SELECT w.sender_phone FROM waybills w, generate_series(1, 20) g LIMIT 5",
    "self join": "SELECT a.sender_phone, b.sender_phone FROM waybills a JOIN waybills b ON b.id = a.id + 1 LIMIT 5",
    "self join, star": "SELECT * FROM waybills a JOIN waybills b ON b.id = a.id + 1 LIMIT 5",
    "concat": "SELECT concat(a.sender_phone, b.sender_phone) FROM waybills a, waybills b WHERE b.id = a.id + 1 LIMIT 5",
    "||": "SELECT a.sender_phone || b.sender_phone FROM waybills a, waybills b WHERE b.id = a.id + 1 LIMIT 5",
    "format": "SELECT format('%s %s', a.sender_phone, b.sender_phone) FROM waybills a, waybills b LIMIT 5",
    "coalesce chain": (
        "SELECT coalesce(CASE WHEN a.id % 2 = 0 THEN a.sender_phone END, b.sender_phone) "
        "FROM waybills a, waybills b WHERE b.id = a.id + 1 LIMIT 5"
    ),
    "ROW of two records": "SELECT ROW(a.sender_phone, b.sender_phone) FROM waybills a, waybills b LIMIT 5",
    "array of two records": "SELECT ARRAY[a.sender_phone, b.sender_phone] FROM waybills a, waybills b LIMIT 5",
    "comparison with another record": "SELECT a.sender_phone, b.sender_phone < '5' FROM waybills a, waybills b LIMIT 5",
    "subquery renames": "SELECT max(p) FROM (SELECT sender_phone AS p FROM waybills) s LIMIT 1",
    "alias columns": "SELECT max(q) FROM (SELECT sender_phone FROM waybills) s (q) LIMIT 1",
    "unnamed expression": "SELECT max(upper) FROM (SELECT upper(sender_phone) FROM waybills) s LIMIT 1",
    "star of a subquery": "SELECT max(x) FROM (SELECT s.* FROM (SELECT sender_phone x FROM waybills) s) t LIMIT 1",
    "union": (
        "SELECT max(x) FROM (SELECT id::text x FROM waybills UNION ALL SELECT sender_phone FROM waybills) s LIMIT 1"
    ),
    "CTE": "WITH c AS (SELECT sender_phone p FROM waybills) SELECT max(p) FROM c LIMIT 1",
    "CTE used twice": (
        "WITH c AS (SELECT id, sender_phone p FROM waybills) "
        "SELECT a.p, b.p FROM c a JOIN c b ON b.id = a.id + 1 LIMIT 5"
    ),
    "lateral": (
        "SELECT w.sender_phone, l.p FROM waybills w, "
        "LATERAL (SELECT v.sender_phone p FROM waybills v WHERE v.id = w.id + 1) l LIMIT 5"
    ),
    "join alias": "SELECT j.sender_phone FROM (waybills a JOIN waybills b USING (id)) j LIMIT 5",
    "cast to a number": "SELECT sum(sender_phone::bigint) FROM waybills GROUP BY id / 20 LIMIT 20",
    "count of personal data": "SELECT count(DISTINCT sender_phone) FROM waybills LIMIT 1",
    "HAVING": "SELECT id / 20 FROM waybills GROUP BY id / 20 HAVING max(sender_phone) > '5' LIMIT 20",
    "subquery bits": BITS,
    "EXISTS bits": "SELECT EXISTS (SELECT 1 FROM waybills x WHERE x.id = 3 AND x.sender_phone LIKE '%3') LIMIT 1",
    "VALUES": "SELECT * FROM (VALUES ((SELECT sender_phone FROM waybills ORDER BY id LIMIT 1))) v LIMIT 1",
    "min of a name": "SELECT min(sender_name), max(recipient_name) FROM waybills LIMIT 1",
}

HONEST = {
    "count": ("SELECT count(*) FROM waybills", [(BRANCH_ROWS["BR001"],)]),
    "count by status": ("SELECT count(*) FROM waybills GROUP BY status ORDER BY 1 LIMIT 5", [(40,), (80,)]),
    "aggregates of other columns": ("SELECT max(id) > 0, count(weight_kg) FROM waybills", [(True, 120)]),
    "row numbers": ("SELECT row_number() OVER (ORDER BY id) FROM waybills ORDER BY 1 LIMIT 2", [(1,), (2,)]),
    "counting subquery": ("SELECT (SELECT count(*) FROM waybills) LIMIT 1", [(BRANCH_ROWS["BR001"],)]),
    "personal data in WHERE": ("SELECT count(*) FROM waybills WHERE sender_phone LIKE '138%'", [(120,)]),
    "one side of a self join": (
        "SELECT a.sender_phone, b.id - a.id FROM waybills a JOIN waybills b ON b.id = a.id + 1 ORDER BY a.id LIMIT 1",
        [("13800000001", 1)],
    ),
    "one record's values together": (
        "SELECT concat(sender_name, ' ', sender_phone) FROM waybills ORDER BY id LIMIT 1",
        [("Sender 1 13800000001",)],
    ),
}


async def _connect(harness: Harness, employee: str = "e1001") -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(harness.pg_dsn(employee), autocommit=True)


def test_the_shapes_do_pack_records_on_the_database_itself(pg_database: str) -> None:
    """Without the broker, the pivot hands 20 phone numbers a row, the FILTER form 130 in one."""
    with direct(pg_database) as admin:
        pivot = admin.execute(PIVOT).fetchall()
        phones = sum(1 for row in pivot for value in row[1:] if value is not None)
        assert phones >= 20 * (len(pivot) - 2)
        (filtered,) = admin.execute(FILTERED).fetchall()
        assert sum(value is not None for value in filtered) == 130


async def test_packing_records_into_a_row_is_refused_with_42501(pg_broker: Harness) -> None:
    """Every shape in one session (one broker start, not fifty); each failure is named."""
    conn = await _connect(pg_broker)
    wrong = {}
    for name, sql in PACKED.items():
        try:
            cur = await conn.execute(sql)
        except psycopg.Error as error:
            if error.sqlstate != "42501" or not error.diag.message_hint:
                wrong[name] = f"{error.sqlstate}: {error}"
            elif "138000" in str(error) or "BR00" in str(error):  # never what the data holds
                wrong[name] = f"the refusal quotes data: {error}"
        else:
            wrong[name] = f"answered {len(await cur.fetchall())} rows"
    assert wrong == {}
    cur = await conn.execute("SELECT count(*) FROM waybills")
    assert await cur.fetchall() == [(BRANCH_ROWS["BR001"],)]
    await conn.close()


async def test_honest_counting_and_single_record_rows_still_work(pg_broker: Harness) -> None:
    conn = await _connect(pg_broker)
    for name, (sql, expected) in HONEST.items():
        cur = await conn.execute(sql)
        assert (name, await cur.fetchall()) == (name, expected)
    await conn.close()


async def test_prepared_packing_is_refused_at_parse(pg_broker: Harness) -> None:
    """The extended protocol (psycopg with parameters) is analysed the same way."""
    conn = await _connect(pg_broker)
    with pytest.raises(psycopg.Error) as caught:
        await conn.execute("SELECT max(sender_phone) FILTER (WHERE id = %s) FROM waybills LIMIT 1", (3,))
    assert caught.value.sqlstate == "42501"
    await conn.close()
