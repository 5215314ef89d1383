"""The PostgreSQL door from the client's side: real drivers (psycopg, asyncpg) through the
broker to a real PostgreSQL, every denial with its SQLSTATE, the session usable after."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from broker.config import MeterSettings
from tests.conftest import BrokerFactory
from tests.harness import Harness, door_settings
from tests.pg_fixtures import BRANCH_ROWS, direct
from tests.redis_fixtures import RedisProcess

pytestmark = pytest.mark.timeout(60)


async def connect(harness: Harness, employee: str = "e1001", **params: str) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(harness.pg_dsn(employee, **params), autocommit=True)


async def rows(conn: psycopg.AsyncConnection[Any], sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    cur = await conn.execute(sql, params)
    return await cur.fetchall()


async def refused(conn: psycopg.AsyncConnection[Any], sql: str, params: Any = None) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as caught:
        await conn.execute(sql, params)
    return caught.value


async def still_usable(conn: psycopg.AsyncConnection[Any]) -> None:
    assert await rows(conn, "SELECT 1") == [(1,)]


async def asyncpg_connect(harness: Harness, employee: str = "e1001", token: str | None = None) -> Any:
    return await asyncpg.connect(
        host="127.0.0.1",
        port=harness.pg_port,
        user=employee,
        password=token or harness.token(employee),
        database=harness.broker.settings.postgres.server_database,
        ssl=False,
    )


# --- login -----------------------------------------------------------------------


async def test_an_employee_logs_in_with_their_token_and_reads_their_branch(pg_broker: Harness) -> None:
    conn = await connect(pg_broker)
    found = await rows(conn, "SELECT waybill_no, branch_code FROM waybills ORDER BY id LIMIT 20")
    assert len(found) == 20
    assert {branch for _, branch in found} == {"BR001"}
    await conn.close()


async def test_a_bad_token_fails_at_startup_with_28P01(pg_broker: Harness) -> None:
    with pytest.raises(asyncpg.InvalidPasswordError) as caught:
        await asyncpg_connect(pg_broker, token="not-a-token")
    assert caught.value.sqlstate == "28P01"
    assert "identity." in str(caught.value)


async def test_a_login_outside_the_shift_fails_with_28000_and_says_when_it_starts(pg_broker: Harness) -> None:
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError) as caught:
        await asyncpg_connect(pg_broker, "e1002")  # night shift; it is 10:00
    assert caught.value.sqlstate == "28000"
    assert "outside your shift" in str(caught.value)
    assert "next shift starts" in str(caught.value)


async def test_the_user_name_must_be_the_tokens_employee(pg_broker: Harness) -> None:
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError) as caught:
        await asyncpg_connect(pg_broker, "e1004", token=pg_broker.token("e1001"))
    assert caught.value.sqlstate == "28000"
    assert "identity.wrong_user" in str(caught.value)


async def test_a_token_that_expires_mid_session_ends_the_session_with_28P01(pg_broker: Harness) -> None:
    conn = await connect(pg_broker)  # the token lives an hour
    assert len(await rows(conn, "SELECT id FROM waybills LIMIT 1")) == 1
    pg_broker.clock.advance(3700)
    error = await refused(conn, "SELECT id FROM waybills LIMIT 1")
    assert error.sqlstate == "28P01"
    assert "expired" in str(error)
    with pytest.raises(psycopg.OperationalError):  # the broker closed the session
        await conn.execute("SELECT 1")
    await conn.close()


async def test_a_shift_that_ends_mid_session_refuses_reads_from_then_on(pg_broker: Harness) -> None:
    long_lived = pg_broker.token("e1001", ttl_seconds=12 * 3600)
    conn = await psycopg.AsyncConnection.connect(pg_broker.pg_dsn("e1001", long_lived), autocommit=True)
    pg_broker.clock.advance(8.5 * 3600)  # 18:30: the day shift ended at 18:00
    error = await refused(conn, "SELECT id FROM waybills LIMIT 1")
    assert error.sqlstate == "42501"
    assert "shift.outside" in str(error)
    await conn.close()


async def test_sessions_per_employee_are_limited_with_53300(make_broker: BrokerFactory, pg_database: str) -> None:
    harness = await make_broker(postgres=door_settings(pg_database, max_sessions_per_employee=1))
    first = await asyncpg_connect(harness)
    with pytest.raises(asyncpg.TooManyConnectionsError) as caught:
        await asyncpg_connect(harness)
    assert caught.value.sqlstate == "53300" and "sessions.over_limit" in str(caught.value)
    other = await asyncpg_connect(harness, "e1004")  # another employee is not affected
    await other.close()
    await first.close()
    await asyncio.sleep(0.1)  # the broker notices the goodbye
    again = await asyncpg_connect(harness)
    await again.close()


@pytest.mark.parametrize(
    ("params", "sqlstate", "words"),
    [
        ({"replication": "database"}, "42501", "replication"),
        ({"options": "-c search_path=evil"}, "42501", "search_path"),
        ({"options": "-c row_security=off"}, "42501", "row_security"),
        ({"dbname": "postgres"}, "3D000", "not served here"),
    ],
)
async def test_startup_parameters_that_would_change_what_sql_means_are_refused(
    pg_broker: Harness, params: dict[str, str], sqlstate: str, words: str
) -> None:
    with pytest.raises(psycopg.OperationalError) as caught:
        await connect(pg_broker, **params)
    assert words in str(caught.value)
    assert sqlstate  # libpq does not expose the SQLSTATE of a failed connection; the text names it


async def test_ordinary_startup_options_reach_the_database(pg_broker: Harness) -> None:
    conn = await connect(pg_broker, options="-c statement_timeout=4321", application_name="waybill-desk")
    assert await rows(conn, "SHOW statement_timeout") == [("4321ms",)]
    await conn.close()


# --- statements refused before the data is touched ----------------------------------


async def test_a_read_without_limit_is_refused_as_bulk_and_the_session_goes_on(pg_broker: Harness) -> None:
    conn = await connect(pg_broker)
    error = await refused(conn, "SELECT * FROM waybills")
    assert error.sqlstate == "42501"
    assert "bulk.unbounded" in str(error)
    assert error.diag.message_hint and "LIMIT" in error.diag.message_hint
    await still_usable(conn)
    await conn.close()


async def test_a_limit_above_the_cap_is_refused_with_the_cap(pg_broker: Harness) -> None:
    conn = await connect(pg_broker)
    error = await refused(conn, "SELECT id FROM waybills LIMIT 51")  # courier cap: 50
    assert error.sqlstate == "42501"
    assert "bulk.over_cap" in str(error)
    assert "50" in str(error)
    assert len(await rows(conn, "SELECT id FROM waybills LIMIT 50")) == 50
    await conn.close()


@pytest.mark.parametrize(
    ("sql", "words"),
    [
        ("SELECT * FROM all_waybills LIMIT 5", "all_waybills"),
        ("SELECT relname FROM pg_catalog.pg_class LIMIT 5", "pg_class"),
        ("SELECT query_to_xml('select * from waybills', true, false, '')", "query_to_xml"),
        ("SELECT string_agg(sender_phone, ',') FROM waybills", "string_agg"),
        ("DO $$ BEGIN PERFORM 1; END $$", "DO"),
        ("COPY waybills TO STDOUT", "bulk.unbounded"),
        ("DECLARE c CURSOR FOR SELECT * FROM waybills", "LIMIT"),
        ("SET search_path = pg_temp, public", "search_path"),
        ("TRUNCATE waybills", "TRUNCATE"),
    ],
)
async def test_what_the_broker_cannot_check_is_refused_with_42501(pg_broker: Harness, sql: str, words: str) -> None:
    conn = await connect(pg_broker)
    error = await refused(conn, sql)
    assert error.sqlstate == "42501", str(error)
    assert words.lower() in (str(error) + (error.diag.message_hint or "")).lower()
    await still_usable(conn)
    await conn.close()


async def test_a_manager_may_read_customers_but_a_courier_may_not(pg_broker: Harness) -> None:
    courier = await connect(pg_broker)
    error = await refused(courier, "SELECT name FROM customers LIMIT 5")
    assert error.sqlstate == "42501"
    assert "policy.not_permitted" in str(error)
    manager = await connect(pg_broker, "e2001")
    assert {b for (b,) in await rows(manager, "SELECT branch_code FROM customers LIMIT 50")} == {"BR003"}
    await courier.close()
    await manager.close()


async def test_a_syntax_error_is_42601_and_nothing_runs(pg_broker: Harness) -> None:
    conn = await connect(pg_broker)
    error = await refused(conn, "SELEC * FRM waybills")
    assert error.sqlstate == "42601"
    await still_usable(conn)
    await conn.close()


async def test_every_statement_of_a_multi_statement_string_is_checked(pg_broker: Harness, pg_database: str) -> None:
    conn = await connect(pg_broker, "e1004")  # clerk: may write
    error = await refused(conn, "UPDATE waybills SET status = 'lost' WHERE id = 1; SELECT * FROM waybills")
    assert error.sqlstate == "42501"
    with direct(pg_database) as admin:
        assert admin.execute("SELECT status FROM waybills WHERE id = 1").fetchone() != ("lost",)
    cur = await conn.execute("SELECT 1; SELECT count(*) FROM waybills")
    assert await cur.fetchall() == [(1,)]
    assert cur.nextset()
    assert await cur.fetchall() == [(BRANCH_ROWS["BR001"],)]
    await conn.close()


# --- branch scoping, whatever the query shape ----------------------------------------

OTHER_BRANCH_SHAPES = [
    "SELECT branch_code FROM waybills WHERE branch_code = 'BR002' LIMIT 50",
    "SELECT b.branch_code FROM waybills a JOIN waybills b ON b.id = a.id + 1 LIMIT 50",
    "SELECT branch_code FROM waybills WHERE id IN (SELECT id FROM waybills WHERE branch_code <> 'BR001') LIMIT 50",
    "WITH w AS (SELECT * FROM waybills) SELECT branch_code FROM w WHERE branch_code = 'BR002' LIMIT 50",
    "SELECT branch_code FROM waybills WHERE branch_code = 'BR002' "
    "UNION ALL SELECT branch_code FROM public.waybills WHERE branch_code = 'BR003' LIMIT 50",
    "SELECT max(branch_code) FROM waybills",
    "SELECT x.branch_code FROM (SELECT * FROM waybills ORDER BY branch_code DESC) AS x LIMIT 50",
    'SELECT branch_code FROM "waybills" w WHERE EXISTS (SELECT 1 FROM waybills v WHERE v.id = w.id) LIMIT 50',
    "SELECT count(*), max(branch_code) FROM waybills",
]


@pytest.mark.parametrize("sql", OTHER_BRANCH_SHAPES)
async def test_no_query_shape_returns_another_branchs_records(pg_broker: Harness, sql: str) -> None:
    conn = await connect(pg_broker)
    for row in await rows(conn, sql):
        assert "BR002" not in row and "BR003" not in row, (sql, row)
    await conn.close()


async def test_a_view_mapped_as_branch_scoped_is_scoped_like_a_table(
    policy_dir: Path, make_broker: BrokerFactory, pg_database: str
) -> None:
    tables = policy_dir / "tables.toml"
    tables.write_text(
        tables.read_text() + '\n[[table]]\nname = "all_waybills"\nresource = "waybill"\nbranch_column = "branch_code"\n'
    )
    harness = await make_broker(postgres=door_settings(pg_database))
    conn = await connect(harness)
    found = await rows(conn, "SELECT DISTINCT branch_code FROM all_waybills LIMIT 10")
    assert found == [("BR001",)]
    await conn.close()


async def test_psql_itself_reads_through_the_broker(pg_broker: Harness) -> None:
    """The real psql binary: simple queries, its own start-up, its own error display."""
    database = pg_broker.broker.settings.postgres.server_database
    command = ["psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=0", "-h", "127.0.0.1", "-p", str(pg_broker.pg_port),
               "-U", "e1001", "-d", database, "-c", "SELECT count(*) FROM waybills",
               "-c", "SELECT * FROM waybills", "-c", "SELECT DISTINCT branch_code FROM waybills LIMIT 5"]  # fmt: skip
    env = {"PGPASSWORD": pg_broker.token("e1001"), "PATH": "/usr/bin:/bin", "PGSSLMODE": "prefer"}
    process = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert out.decode().split() == [str(BRANCH_ROWS["BR001"]), "BR001"]
    assert "bulk.unbounded" in err.decode() and "HINT:" in err.decode()


async def test_counts_see_only_the_own_branch(pg_broker: Harness) -> None:
    conn = await connect(pg_broker)
    assert await rows(conn, "SELECT count(*) FROM waybills") == [(BRANCH_ROWS["BR001"],)]
    await conn.close()


async def test_an_auditor_without_a_branch_sees_every_branch(pg_broker: Harness) -> None:
    conn = await connect(pg_broker, "e9001")
    found = await rows(conn, "SELECT DISTINCT branch_code FROM waybills ORDER BY 1 LIMIT 10")
    assert found == [(b,) for b in sorted(BRANCH_ROWS)]
    await conn.close()


async def test_writes_reach_only_the_own_branch(pg_broker: Harness, pg_database: str) -> None:
    conn = await connect(pg_broker, "e1004")  # clerk, BR001
    cur = await conn.execute("UPDATE waybills SET status = 'held' WHERE waybill_no IN ('BR001-7', 'BR002-7')")
    assert cur.rowcount == 1
    with direct(pg_database) as admin:
        found = admin.execute("SELECT waybill_no, status FROM waybills WHERE waybill_no LIKE '%-7' ORDER BY 1")
        assert dict(found.fetchall())["BR002-7"] != "held"
    error = await refused(conn, "INSERT INTO waybills (waybill_no, branch_code) VALUES (%s, %s)", ("X-1", "BR002"))
    assert error.sqlstate == "42501"
    await conn.execute("INSERT INTO waybills (waybill_no, branch_code) VALUES (%s, %s)", ("X-2", "BR001"))
    error = await refused(conn, "INSERT INTO waybills (waybill_no, branch_code) VALUES ('X-3', 'BR002')")
    assert error.sqlstate == "42501" and "BR001" in str(error)  # a literal, in the simple protocol
    await still_usable(conn)
    error = await refused(conn, "UPDATE waybills SET branch_code = 'BR002' WHERE waybill_no = 'BR001-8'")
    assert error.sqlstate == "42501"
    await conn.close()
    with direct(pg_database) as admin:  # leave the seeded counts as other tests expect them
        assert admin.execute("DELETE FROM waybills WHERE waybill_no LIKE 'X-%'").rowcount == 1
        admin.execute("UPDATE waybills SET status = 'in_transit' WHERE waybill_no = 'BR001-7'")


async def test_a_courier_may_not_write(pg_broker: Harness) -> None:
    conn = await connect(pg_broker)
    error = await refused(conn, "DELETE FROM waybills WHERE id = 3")
    assert error.sqlstate == "42501"
    assert "policy.not_permitted" in str(error)
    await conn.close()


# --- extended protocol ----------------------------------------------------------------


async def test_asyncpg_prepared_statements_are_decided_again_with_the_limit_at_bind(pg_broker: Harness) -> None:
    conn = await asyncpg_connect(pg_broker)
    statement = await conn.prepare("SELECT waybill_no, branch_code FROM waybills WHERE status = $1 LIMIT $2")
    found = await statement.fetch("in_transit", 10)
    assert len(found) == 10
    assert {r["branch_code"] for r in found} == {"BR001"}
    with pytest.raises(asyncpg.InsufficientPrivilegeError) as caught:
        await statement.fetch("in_transit", 500)
    assert "bulk.over_cap" in str(caught.value)
    assert len(await statement.fetch("delivered", 5)) == 5  # the session and the statement still work
    await conn.close()


async def test_psycopg_parameters_go_through_the_extended_protocol(pg_broker: Harness) -> None:
    conn = await connect(pg_broker)
    found = await rows(conn, "SELECT branch_code FROM waybills WHERE waybill_no = %s LIMIT %s", ("BR002-1", 5))
    assert found == []
    found = await rows(conn, "SELECT branch_code FROM waybills WHERE waybill_no = %s LIMIT %s", ("BR001-1", 5))
    assert found == [("BR001",)]
    error = await refused(conn, "SELECT * FROM waybills WHERE status = %s", ("held",))
    assert error.sqlstate == "42501"
    await still_usable(conn)
    await conn.close()


async def test_a_refusal_inside_a_pipeline_arrives_in_order(pg_broker: Harness) -> None:
    conn = await connect(pg_broker)
    async with conn.pipeline() as pipeline:
        first = await conn.execute("SELECT id FROM waybills WHERE id > %s LIMIT %s", (0, 3))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute("SELECT * FROM waybills WHERE id > %s", (0,))
            await pipeline.sync()
    assert len(await first.fetchall()) == 3
    await still_usable(conn)
    await conn.close()


# --- metering on the wire ----------------------------------------------------------


async def test_an_answer_over_its_weight_is_cut_mid_stream_with_53400_and_charged_what_was_sent(
    make_broker: BrokerFactory, pg_database: str
) -> None:
    # The analyser bounds rows exactly (LIMIT), so what can still overflow is the weight of
    # the rows: the wire meter counts bytes too, stops the statement at the server, and
    # charges only the rows that were sent.
    harness = await make_broker(postgres=door_settings(pg_database, max_result_bytes=2048))
    conn = await connect(harness, "e1003")  # trainee: cap 20, quota 60 per shift
    error = await refused(conn, "SELECT * FROM waybills ORDER BY id LIMIT 20")
    assert error.sqlstate == "53400", str(error)
    assert "upstream.too_many_records" in str(error) and "2048 bytes" in str(error)
    assert error.diag.message_detail and "quota" in error.diag.message_detail
    await still_usable(conn)
    async with conn.transaction():
        assert len(await rows(conn, "SELECT id FROM waybills LIMIT 20")) == 20
    apg = await asyncpg_connect(harness, "e1003")
    with pytest.raises(asyncpg.ConfigurationLimitExceededError):
        await apg.fetch("SELECT * FROM waybills ORDER BY id LIMIT $1", 20)
    assert await apg.fetchval("SELECT count(*) FROM waybills") == BRANCH_ROWS["BR001"]
    await apg.close()
    sent = [e for e in await harness.audit_events(at_least=3) if e.get("cut")]
    assert sent and all(0 < e["records_returned"] < 20 for e in sent)
    await conn.close()


async def test_the_records_quota_runs_out_and_says_when_it_resets(pg_broker: Harness) -> None:
    conn = await connect(pg_broker, "e1003")  # trainee: cap 20, quota 60 per shift
    for _ in range(3):
        assert len(await rows(conn, "SELECT id FROM waybills LIMIT 20")) == 20
    error = await refused(conn, "SELECT id FROM waybills LIMIT 1")
    assert error.sqlstate == "53400"
    assert "quota.exceeded" in str(error)
    assert error.diag.message_detail and "60 of 60" in error.diag.message_detail
    await still_usable(conn)
    await conn.close()


async def test_copy_out_is_counted_and_scoped(pg_broker: Harness) -> None:
    conn = await connect(pg_broker)
    lines = []
    async with conn.cursor().copy("COPY (SELECT branch_code FROM waybills LIMIT 7) TO STDOUT") as copy:
        async for chunk in copy:
            lines.extend(bytes(chunk).decode().splitlines())
    assert lines == ["BR001"] * 7
    await conn.close()


async def copied(conn: psycopg.AsyncConnection[Any], sql: str) -> list[str]:
    lines = []
    async with conn.cursor().copy(sql) as copy:
        async for chunk in copy:
            lines.extend(bytes(chunk).decode().splitlines())
    return lines


async def test_a_copy_header_is_column_names_not_a_record(pg_broker: Harness) -> None:
    """COPY ... WITH (HEADER) sends the column names first: neither cut against the cap
    nor charged to the quota (it was counted as a record: 20 rows with a header broke a
    cap of 20)."""
    conn = await connect(pg_broker, "e1003")  # trainee: cap 20, quota 60 per shift
    for header in ("HEADER", "HEADER true", "HEADER 'on'"):
        lines = await copied(conn, f"COPY (SELECT id FROM waybills LIMIT 20) TO STDOUT WITH (FORMAT csv, {header})")
        assert lines[0] == "id" and len(lines) == 21
    error = await refused(conn, "SELECT id FROM waybills LIMIT 1")  # 60 records charged: 3 x 20, no headers
    assert "quota.exceeded" in str(error)
    await conn.close()


async def test_a_copy_without_a_header_counts_every_line(pg_broker: Harness) -> None:
    """HEADER false (or a spelling the broker does not read as surely on) leaves every
    line a record: the first row is never passed uncounted."""
    conn = await connect(pg_broker, "e1003")  # trainee: cap 20
    for header in ("HEADER false", "HEADER 0"):
        lines = await copied(conn, f"COPY (SELECT id FROM waybills LIMIT 20) TO STDOUT WITH (FORMAT csv, {header})")
        assert len(lines) == 20 and lines[0] != "id"
    assert len(await rows(conn, "SELECT id FROM waybills LIMIT 20")) == 20  # 60 of 60 charged
    error = await refused(conn, "SELECT id FROM waybills LIMIT 1")  # had a line gone uncounted, this would pass
    assert "quota.exceeded" in str(error)
    await conn.close()


async def test_a_copy_header_is_not_counted_after_the_same_shape_without_one(pg_broker: Harness) -> None:
    """HEADER 'off' and HEADER 'on' have one shape: a statement made from the analysis of
    the first must not stand for the second, or its header is counted as a record (20 rows
    with a header then broke a cap of 20 once HEADER 'off' had been seen)."""
    conn = await connect(pg_broker, "e1003")  # trainee: cap 20, quota 60 per shift
    sql = "COPY (SELECT id FROM waybills LIMIT 20) TO STDOUT WITH (FORMAT csv, HEADER '{}')"
    lines = await copied(conn, sql.format("off"))
    assert len(lines) == 20 and lines[0] != "id"
    lines = await copied(conn, sql.format("on"))
    assert lines[0] == "id" and len(lines) == 21
    lines = await copied(conn, sql.format("off"))  # the other way round: every line still counts
    assert len(lines) == 20 and lines[0] != "id"
    error = await refused(conn, "SELECT id FROM waybills LIMIT 1")  # 60 records charged, no headers
    assert "quota.exceeded" in str(error)
    await conn.close()


async def test_a_cancel_reaches_the_server_through_the_brokers_own_keys(
    make_broker: BrokerFactory, pg_database: str
) -> None:
    harness = await make_broker(postgres=door_settings(pg_database))
    conn = await asyncpg_connect(harness)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(asyncio.TimeoutError):
        # long without pg_sleep (tables.toml may never allow pg_* functions): 120^5 row pairs
        await conn.fetch("SELECT count(*) FROM waybills a, waybills b, waybills c, waybills d, waybills e", timeout=0.5)
    assert await conn.fetchval("SELECT 1") == 1
    assert loop.time() - started < 10
    await conn.close()


# --- transactions --------------------------------------------------------------------


async def test_a_refusal_inside_a_transaction_aborts_it_until_rollback(pg_broker: Harness) -> None:
    conn = await connect(pg_broker)
    await conn.execute("BEGIN")
    assert len(await rows(conn, "SELECT id FROM waybills LIMIT 2")) == 2
    error = await refused(conn, "SELECT * FROM waybills")
    assert error.sqlstate == "42501"
    error = await refused(conn, "SELECT 1")
    assert error.sqlstate == "25P02"  # in_failed_sql_transaction, as PostgreSQL itself says
    await conn.execute("ROLLBACK")
    await still_usable(conn)
    await conn.close()


# --- audit ---------------------------------------------------------------------------


async def test_every_statement_and_the_session_are_audited(pg_broker: Harness) -> None:
    conn = await connect(pg_broker)
    await rows(conn, "SELECT id, sender_phone FROM waybills LIMIT 4")
    await refused(conn, "SELECT * FROM waybills")
    await conn.close()
    events = await pg_broker.audit_events(at_least=4)
    pg_events = [e for e in events if e.get("door") == "pg"]
    login = next(e for e in pg_events if e.get("kind") == "pg.login")
    assert login["employee"] == "e1001" and login["verdict"] == "allow"
    read = next(e for e in pg_events if e.get("records_returned") == 4)
    assert read["tables"] == ["waybills"] and read["statement"] and read["pii_columns"] == ["waybills.sender_phone"]
    denied = next(e for e in pg_events if e.get("reason") == "bulk.unbounded")
    assert denied["sqlstate"] == "42501"
    await asyncio.sleep(0.2)
    events = await pg_broker.audit_events(at_least=5)
    session = next(e for e in events if e.get("kind") == "pg.session")
    assert session["employee"] == "e1001" and session["records_returned"] == 4
    assert "token" not in str(events) and pg_broker.token("e1001") not in str(events)


# --- policy reloads ------------------------------------------------------------------


async def test_a_broken_table_map_edit_is_refused_and_the_last_good_one_keeps_serving(
    pg_broker: Harness, policy_dir: Path
) -> None:
    conn = await connect(pg_broker)
    tables = policy_dir / "tables.toml"
    tables.write_text(tables.read_text().replace('resource = "waybill"', 'resource = "waybil"'))
    assert not await pg_broker.broker.reload("test")
    rejected = pg_broker.broker.policy.last_error
    assert rejected is not None and "waybil" in str(rejected) and "tables.toml" in str(rejected)
    assert len(await rows(conn, "SELECT id FROM waybills LIMIT 3")) == 3
    tables.write_text(tables.read_text().replace('name = "waybills"', 'name = "parcels"'))
    tables.write_text(tables.read_text().replace('resource = "waybil"', 'resource = "waybill"'))
    assert await pg_broker.broker.reload("test")
    error = await refused(conn, "SELECT id FROM waybills LIMIT 3")  # the new map no longer opens it
    assert error.sqlstate == "42501" and "waybills" in str(error)
    await conn.close()


async def test_a_portal_read_in_chunks_is_counted_across_executes(pg_broker: Harness) -> None:
    conn = await asyncpg_connect(pg_broker, "e1003")  # trainee: cap 20, quota 60
    async with conn.transaction():
        seen = [r["id"] async for r in conn.cursor("SELECT id FROM waybills ORDER BY id LIMIT 20", prefetch=7)]
    assert len(seen) == 20
    async with conn.transaction():
        seen = [r["id"] async for r in conn.cursor("SELECT id FROM waybills ORDER BY id LIMIT 20", prefetch=3)]
    assert len(seen) == 20
    assert len(await conn.fetch("SELECT id FROM waybills LIMIT 20")) == 20  # 60 of 60 now
    with pytest.raises(asyncpg.ConfigurationLimitExceededError) as caught:
        await conn.fetch("SELECT id FROM waybills LIMIT 1")
    assert "quota.exceeded" in str(caught.value)
    await conn.close()


async def test_a_failing_cast_does_not_quote_the_value_it_failed_on(pg_broker: Harness) -> None:
    conn = await connect(pg_broker)
    error = await refused(conn, "SELECT id FROM waybills WHERE sender_phone::int = 5 LIMIT 1")
    assert error.sqlstate is not None and error.sqlstate.startswith("22")  # out of range: 13800000001
    assert "138" not in str(error) and not error.diag.message_detail
    await still_usable(conn)
    await conn.close()


async def test_records_are_charged_by_weight_when_rows_carry_more_than_one(
    make_broker: BrokerFactory, pg_database: str
) -> None:
    """A row can hold many records' fields; at 200 bytes a record, a 1 kB row is charged 6."""
    harness = await make_broker(postgres=door_settings(pg_database, bytes_per_record=200))
    conn = await connect(harness, "e1003")  # trainee: cap 20, quota 60
    error = await refused(conn, "SELECT lpad(sender_name, 1000, '*') FROM waybills ORDER BY id LIMIT 10")
    assert error.sqlstate == "53400" and "2000 bytes" in str(error)  # 10 records x 200 bytes
    assert error.diag.message_detail and "6 of 60 records used" in error.diag.message_detail
    for _ in range(2):  # light rows are charged as rows: 6 + 20 + 20
        assert len(await rows(conn, "SELECT id FROM waybills LIMIT 20")) == 20
    error = await refused(conn, "SELECT id FROM waybills LIMIT 20")  # 46 + 20 > 60
    assert error.sqlstate == "53400" and "quota.exceeded" in str(error)
    assert error.diag.message_detail and "46 of 60" in error.diag.message_detail
    await conn.close()


@pytest.mark.parametrize("extra_branches", [0, 2, 6, 12])
async def test_no_condition_of_the_statement_runs_on_another_branchs_rows(
    make_broker: BrokerFactory, pg_database: str, policy_dir: Path, extra_branches: int
) -> None:
    """If a statement's own condition ran before the branch filter, its errors would tell
    about other branches' rows (a division by zero as a yes/no oracle). PostgreSQL orders a
    scan's conditions by estimated cost, and `= ANY` costs more the more branches there are:
    the broker's filter must come first however many branches an employee holds."""
    roster = policy_dir / "roster.csv"
    extra = "".join(f"g, e2001, manager, BR1{k:02d}\n" for k in range(extra_branches))
    roster.write_text(roster.read_text() + extra)
    listed = policy_dir / "branches.csv"
    listed.write_text(listed.read_text() + "".join(f"BR1{k:02d}, empty {k}, Asia/Shanghai, \n" for k in range(12)))
    (policy_dir / "policy.toml").write_text("[roster]\nseveral_branches = true\n")
    harness = await make_broker(postgres=door_settings(pg_database))
    conn = await connect(harness, "e2001")  # BR003 (+ branches with no rows)
    for probe in ("BR001-100", "BR002-5", "BR003-5"):
        divide = f"1/(CASE WHEN waybill_no = '{probe}' THEN 0 ELSE 1 END)"
        oracle = f"SELECT count(*) FROM waybills WHERE ({divide}) IS NULL"
        if probe.startswith("BR003"):  # an own row: the division does fail, as it should
            assert (await refused(conn, oracle)).sqlstate == "22012"
        else:
            assert await rows(conn, oracle) == [(0,)], probe
        if not probe.startswith("BR003"):  # the same oracle in an UPDATE: must not fail either
            update = f"UPDATE waybills SET status = status WHERE ({divide}) = 1"
            assert (await conn.execute(update)).rowcount == BRANCH_ROWS["BR003"], probe
    await conn.close()


async def test_metrics_show_the_doors_sessions_logins_and_statements(pg_broker: Harness) -> None:
    conn = await connect(pg_broker)
    await rows(conn, "SELECT id FROM waybills LIMIT 2")
    await refused(conn, "SELECT * FROM waybills")
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError):
        await asyncpg_connect(pg_broker, "e1002")  # off shift
    metrics = (await pg_broker.get("/-/metrics")).body.decode()
    assert "broker_pg_sessions 1.0" in metrics
    assert 'broker_pg_logins_total{reason="allow",verdict="allow"} 1.0' in metrics
    assert 'broker_pg_logins_total{reason="shift.outside",verdict="deny"} 1.0' in metrics
    assert 'broker_pg_statements_total{reason="allow",verdict="allow"} 1.0' in metrics
    assert 'broker_pg_statements_total{reason="bulk.unbounded",verdict="deny"} 1.0' in metrics
    await conn.close()
    await asyncio.sleep(0.1)
    assert "broker_pg_sessions 0.0" in (await pg_broker.get("/-/metrics")).body.decode()


async def test_prepared_statements_follow_policy_reloads(
    pg_broker: Harness, policy_dir: Path, pg_database: str
) -> None:
    roster = policy_dir / "roster.csv"
    roster.write_text(roster.read_text() + "\ng, e1005, clerk, BR001\ng2, e1005, day-cn\n")
    assert await pg_broker.broker.reload("test")
    conn = await asyncpg_connect(pg_broker, "e1005")
    try:
        statement = await conn.prepare("SELECT branch_code FROM waybills LIMIT $1")
        assert {r["branch_code"] for r in await statement.fetch(5)} == {"BR001"}
        insert = await conn.prepare("INSERT INTO waybills (waybill_no, branch_code) VALUES ($1, $2)")
        await insert.fetch("R-1", "BR001")
        update = await conn.prepare("UPDATE waybills SET status = $1 WHERE waybill_no = $2")
        roster.write_text(roster.read_text() + "\n# a comment: a new revision, nothing else\n")
        assert await pg_broker.broker.reload("test")
        assert len(await statement.fetch(5)) == 5  # same meaning under the new revision: still runs
        limits = policy_dir / "limits.csv"
        limits.write_text(limits.read_text().replace("p3, clerk, waybill, 100,", "p3, clerk, waybill, 90,"))
        assert await pg_broker.broker.reload("test")
        with pytest.raises(asyncpg.FeatureNotSupportedError) as caught:  # its text carries the old write cap
            await update.fetch("checked", "R-1")
        assert "prepare" in str(caught.value).lower()
        roster.write_text(roster.read_text().replace("g, e1005, clerk, BR001", "g, e1005, clerk, BR002"))
        assert await pg_broker.broker.reload("test")
        with pytest.raises(asyncpg.PostgresError) as ended:  # its server session carries BR001
            await statement.fetch(5)
        assert "branches changed" in str(ended.value)
        conn = await asyncpg_connect(pg_broker, "e1005")
        insert = await conn.prepare("INSERT INTO waybills (waybill_no, branch_code) VALUES ($1, $2)")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):  # BR001 is no longer theirs to write
            await insert.fetch("R-2", "BR001")
        with direct(pg_database) as admin:
            found = admin.execute("SELECT waybill_no, status FROM waybills WHERE waybill_no LIKE 'R-%'").fetchall()
            assert found == [("R-1", "created")]
        again = await conn.prepare("SELECT branch_code FROM waybills WHERE true LIMIT $1")
        assert {r["branch_code"] for r in await again.fetch(5)} == {"BR002"}
        tables = policy_dir / "tables.toml"
        tables.write_text(tables.read_text().replace('name = "waybills"', 'name = "parcels"'))
        assert await pg_broker.broker.reload("test")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):  # no longer open at all
            await again.fetch(5)
    finally:
        await conn.close()
        with direct(pg_database) as admin:
            admin.execute("DELETE FROM waybills WHERE waybill_no LIKE 'R-%'")


async def test_quota_counters_out_of_reach_refuse_reads_with_53400_and_the_session_goes_on(
    make_broker: BrokerFactory, pg_database: str, redis_process: RedisProcess
) -> None:
    meter = MeterSettings(store="redis", redis_url=redis_process.url, timeout_seconds=0.2)
    harness = await make_broker(postgres=door_settings(pg_database), meter=meter)
    conn = await connect(harness)
    assert len(await rows(conn, "SELECT id FROM waybills LIMIT 2")) == 2
    redis_process.stop()
    error = await refused(conn, "SELECT id FROM waybills LIMIT 2")
    assert error.sqlstate == "53400" and "meter.unavailable" in str(error)
    await still_usable(conn)  # no records, no counting: the session itself is fine
    await conn.close()


async def test_a_statement_touching_no_table_is_still_decided(pg_broker: Harness) -> None:
    """Issue #13: a statement believed table-less got no decision at all, so it ran after
    the token expired or the shift ended."""
    long_lived = pg_broker.token("e1001", ttl_seconds=12 * 3600)
    conn = await psycopg.AsyncConnection.connect(pg_broker.pg_dsn("e1001", long_lived), autocommit=True)
    assert await rows(conn, "SELECT 1") == [(1,)]
    pg_broker.clock.advance(9 * 3600)  # 19:00 in Shanghai: the day shift is over
    error = await refused(conn, "SELECT 2")
    assert error.sqlstate == "42501" and "outside your shift" in str(error)
    for _ in range(50):
        events = await pg_broker.audit_events()
        if any(e["reason"] == "shift.outside" for e in events):
            break
        await asyncio.sleep(0.05)
    assert [e.get("statement_kind") for e in events if e["reason"] == "shift.outside"] == ["select"]
    await conn.close()


async def test_a_table_free_statement_after_the_token_expired_ends_the_session(pg_broker: Harness) -> None:
    conn = await connect(pg_broker)  # the token lives an hour
    assert await rows(conn, "SELECT 1") == [(1,)]
    pg_broker.clock.advance(3700)
    error = await refused(conn, "SELECT 1")
    assert error.sqlstate == "28P01" and "expired" in str(error)
    await conn.close()


async def test_statement_timeout_is_bounded_never_lifted(pg_broker: Harness) -> None:
    """Issue #13: a client could SET statement_timeout = 0 and run a 600^4-row cross join
    on the broker's login for as long as it liked."""
    conn = await connect(pg_broker)
    assert await rows(conn, "SHOW statement_timeout") == [("1min",)]  # every session's default
    for value in ("0", "'0'", "'2min'", "600000", "'forever'"):
        error = await refused(conn, f"SET statement_timeout = {value}")
        assert error.sqlstate == "22023" and "statement_timeout" in str(error), value
        await still_usable(conn)
    await conn.execute("SET statement_timeout = '5s'")
    assert await rows(conn, "SHOW statement_timeout") == [("5s",)]
    await conn.execute("RESET statement_timeout")
    assert await rows(conn, "SHOW statement_timeout") == [("1min",)]
    await conn.close()


async def test_statement_timeout_in_startup_options_is_bounded(pg_broker: Harness) -> None:
    with pytest.raises(psycopg.OperationalError) as caught:
        await connect(pg_broker, options="-c statement_timeout=0")
    assert "statement_timeout must be above 0" in str(caught.value)
    conn = await connect(pg_broker, options="-c statement_timeout=3s")
    assert await rows(conn, "SHOW statement_timeout") == [("3s",)]
    await conn.close()


@pytest.mark.parametrize("setting", ["ALL", "data_directory", "config_file", "hba_file", "is_superuser", "port"])
async def test_server_facts_are_not_shown(pg_broker: Harness, setting: str) -> None:
    conn = await connect(pg_broker)
    error = await refused(conn, f"SHOW {setting}")
    assert error.sqlstate == "42501" and "not answered through the broker" in str(error)
    await still_usable(conn)
    await conn.close()


async def test_the_brokers_own_login_is_not_described_to_clients(pg_broker: Harness) -> None:
    """The broker logs in as the tests' superuser; clients must not be told so."""
    conn = await connect(pg_broker)
    assert conn.info.parameter_status("is_superuser") is None
    assert conn.info.parameter_status("session_authorization") is None
    assert conn.info.parameter_status("server_version") is not None  # drivers need this one
    assert conn.info.parameter_status("client_encoding") == "UTF8"
    await conn.close()
