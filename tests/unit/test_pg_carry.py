"""Packing many records into one row, refused by the analysis alone (sql_carry).

The integration tests (tests/integration/test_pg_packing.py) send the shapes through the
broker to the real PostgreSQL 15; these add forms that server cannot parse (subqueries
without an alias, PostgreSQL 16) or that need no server to show.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.pg.sql import SqlRefused, analyse
from broker.policy.table import parse_tables

TABLES, _ = parse_tables("tables.toml", Path("policies/tables.toml").read_bytes())


@pytest.mark.parametrize(
    "sql",
    [
        "select max(p) from (select sender_phone p from waybills)",
        "select max(sender_phone) from (select sender_phone from waybills)",
        "select p, q from (select sender_phone p from waybills), lateral (select sender_phone q from waybills)",
        "select max(p) from (select * from (select sender_phone p from waybills)) limit 1",
        "with c as (select sender_phone from waybills) select max(sender_phone) from (select * from c)",
        "update waybills w set sender_name = x.sender_phone from waybills x where x.id = w.id + 1",
        "update waybills set sender_name = (select max(id)::text from waybills where sender_phone like '1%')",
        "select customers.phone, w.sender_phone, x.sender_phone from customers, waybills w, waybills x limit 5",
        # laundering: personal data written into a column tables.toml does not mark
        "update waybills set status = sender_phone where id = 1",
        "update waybills w set status = c.phone from customers c where c.id = w.id",
    ],
)
def test_packing_shapes_are_refused(sql: str) -> None:
    assert TABLES is not None
    with pytest.raises(SqlRefused) as caught:
        analyse(sql, TABLES)
    assert caught.value.sqlstate == "42501"
    assert "personal data" in caught.value.message


@pytest.mark.parametrize(
    "sql",
    [
        "select p from (select sender_phone p from waybills) limit 5",
        "select max(id) from (select id, sender_phone from waybills)",
        "select c.phone, w.sender_phone from customers c join waybills w on w.id = c.id limit 5",
        "update waybills set sender_name = upper(sender_name) where id = 1",
        "update waybills w set status = x.status from waybills x where x.id = w.id + 1",
        "update waybills set recipient_name = sender_name where id = 1",
        "update waybills set status = 'held' where sender_phone like '138%'",
    ],
)
def test_one_record_per_row_is_accepted(sql: str) -> None:
    assert TABLES is not None
    assert analyse(sql, TABLES)
