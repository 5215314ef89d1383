"""Catalog and server-fact questions through the broker, against the real PostgreSQL.

`query_to_xml('select * from waybills', ...)` runs its own SQL on the server, outside the
branch scoping: on the database itself it answers every branch's records. Through the
broker it, and every other way to ask about the server, is refused with 42501.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from broker.policy.table import parse_tables
from tests.harness import Harness
from tests.pg_fixtures import direct

pytestmark = pytest.mark.timeout(60)

ESCAPES = {
    "query_to_xml": "SELECT query_to_xml('select * from waybills', true, true, '')",
    "query_to_xml qualified": "SELECT pg_catalog.query_to_xml('select sender_phone from waybills', true, true, '')",
    "table_to_xml": "SELECT table_to_xml('waybills', true, true, '')",
    "cursor_to_xml": "SELECT cursor_to_xml('c', 100, true, true, '')",
    "database_to_xml": "SELECT database_to_xml(true, true, '')",
    "query_to_xml in FROM": "SELECT * FROM query_to_xml('select * from waybills', true, true, '') x LIMIT 1",
    "dblink": "SELECT * FROM dblink('dbname=test', 'select 1') AS t(x int) LIMIT 1",
    "ts_stat": "SELECT * FROM ts_stat('select to_tsvector(sender_name) from waybills') LIMIT 5",
    "current_setting": "SELECT current_setting('data_directory')",
    "set_config": "SELECT set_config('statement_timeout', '0', false)",
    "pg_settings": "SELECT name, setting FROM pg_settings LIMIT 5",
    "pg_catalog.pg_settings": "SELECT name FROM pg_catalog.pg_settings LIMIT 5",
    "pg_stats": "SELECT most_common_vals FROM pg_stats WHERE tablename = 'waybills' LIMIT 5",
    "pg_class": "SELECT relname, reltuples FROM pg_class LIMIT 5",
    "pg_stat_activity": "SELECT query FROM pg_stat_activity LIMIT 5",
    "information_schema": "SELECT table_name FROM information_schema.tables LIMIT 5",
    "pg_read_file": "SELECT pg_read_file('postmaster.pid')",
    "pg_ls_dir": "SELECT pg_ls_dir('.')",
    "inet_server_addr": "SELECT inet_server_addr()",
    "version": "SELECT version()",
    "pg_backend_pid": "SELECT pg_backend_pid()",
    "txid_current": "SELECT txid_current()",
    "pg_current_xact_id": "SELECT pg_current_xact_id()",
    "pg_sleep": "SELECT pg_sleep(5)",
    "lo_import": "SELECT lo_import('/etc/passwd')",
    "lo_get": "SELECT lo_get(1)",
    "pg_get_viewdef": "SELECT pg_get_viewdef('all_waybills')",
    "pg_get_functiondef": "SELECT pg_get_functiondef(1)",
    "has_table_privilege": "SELECT has_table_privilege('waybills', 'select')",
    "current_user": "SELECT current_user",
    "session_user": "SELECT session_user",
    "current_catalog": "SELECT current_catalog",
    "current_schema": "SELECT current_schema",
    "current_database()": "SELECT current_database()",
    "regclass": "SELECT 'pg_authid'::regclass",
    "regrole": "SELECT 'postgres'::regrole",
    "regclass existence oracle": "SELECT id FROM waybills WHERE 'public.secret'::regclass IS NOT NULL LIMIT 1",
    "a view not in the map": "SELECT * FROM all_waybills LIMIT 5",
}


async def _connect(harness: Harness, employee: str = "e1001") -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(harness.pg_dsn(employee), autocommit=True)


def test_query_to_xml_escapes_the_scoping_on_the_database_itself(pg_database: str) -> None:
    """What the refusal prevents: the server runs the inner SQL unscoped."""
    with direct(pg_database) as admin:
        (xml,) = admin.execute("SELECT query_to_xml('select branch_code from waybills', true, false, '')").fetchone()
        assert "BR002" in xml and "BR003" in xml


async def test_catalog_and_server_fact_questions_are_refused_with_42501(pg_broker: Harness) -> None:
    conn = await _connect(pg_broker)
    wrong = {}
    for name, sql in ESCAPES.items():
        try:
            cur = await conn.execute(sql)
        except psycopg.Error as error:
            if error.sqlstate != "42501" or not error.diag.message_hint:
                wrong[name] = f"{error.sqlstate}: {error}"
        else:
            wrong[name] = f"answered {await cur.fetchall()!r}"[:200]
    assert wrong == {}
    cur = await conn.execute("SELECT current_date IS NOT NULL, now() IS NOT NULL")  # dates stay
    assert await cur.fetchall() == [(True, True)]
    await conn.close()


@pytest.mark.parametrize("function", ["query_to_xml", "current_setting", "pg_read_file", "string_agg", "lo_get"])
def test_tables_toml_may_never_allow_functions_that_escape_or_pack(function: str) -> None:
    text = Path("policies/tables.toml").read_text().replace("functions = []", f'functions = ["{function}"]')
    tables, problems = parse_tables("tables.toml", text.encode())
    assert tables is None
    assert function in problems[0].message and problems[0].line > 0
