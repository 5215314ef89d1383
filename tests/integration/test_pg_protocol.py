"""The PostgreSQL door at the protocol level: start-up negotiation, TLS, cancel keys, the
FunctionCall message and pipelined refusals, spoken byte by byte over a real socket."""

from __future__ import annotations

import asyncio
import socket
import struct
from pathlib import Path

import psycopg
import pytest

from broker.pg.wire import (
    GSSENC_REQUEST,
    PROTOCOL_3_0,
    SSL_REQUEST,
    MessageBuffer,
    cstring,
    error_fields,
    execute,
    message,
    startup_message,
)
from tests.certs import self_signed
from tests.conftest import BrokerFactory
from tests.harness import Harness, door_settings, routable_address
from tests.pg_client import RawClient, bind, kinds, parse, sqlstate

pytestmark = pytest.mark.timeout(60)


async def test_gssenc_is_declined_and_the_startup_goes_on(pg_broker: Harness) -> None:
    client = await RawClient.open(pg_broker.pg_port)
    client.writer.write(struct.pack("!II", 8, GSSENC_REQUEST))
    assert await client.reader.readexactly(1) == b"N"
    await client.login(pg_broker)
    await client.close()


async def test_ssl_is_declined_without_a_certificate(pg_broker: Harness) -> None:
    client = await RawClient.open(pg_broker.pg_port)
    client.writer.write(struct.pack("!II", 8, SSL_REQUEST))
    assert await client.reader.readexactly(1) == b"N"
    await client.login(pg_broker)
    await client.close()


async def test_a_newer_protocol_minor_is_negotiated_down_to_3_0(pg_broker: Harness) -> None:
    client = await RawClient.open(pg_broker.pg_port)
    database = pg_broker.broker.settings.postgres.server_database
    packet = bytearray(startup_message({"user": "e1001", "database": database, "_pq_.future": "1"}))
    packet[4:8] = struct.pack("!I", PROTOCOL_3_0 + 2)
    client.writer.write(bytes(packet))
    kind, raw = await client.next()
    assert kind == b"v"
    assert struct.unpack("!II", raw[5:13]) == (0, 1) and b"_pq_.future" in raw
    assert (await client.next())[0] == b"R"
    await client.close()


async def test_the_function_call_message_is_refused_with_42501(pg_broker: Harness) -> None:
    client = await RawClient.open(pg_broker.pg_port)
    await client.login(pg_broker)
    client.writer.write(message(b"F", struct.pack("!IHHIH", 1247, 0, 0, 0, 0)))
    answer = await client.until(b"Z")
    assert kinds(answer) == b"EZ"
    assert sqlstate(answer[0][1]) == "42501" and b"FunctionCall" in answer[0][1]
    client.writer.write(message(b"Q", cstring("SELECT 1")))
    assert kinds(await client.until(b"Z")) == b"TDCZ"
    await client.close()


async def test_a_refused_statement_in_a_pipeline_answers_in_order_and_skips_to_sync(pg_broker: Harness) -> None:
    client = await RawClient.open(pg_broker.pg_port)
    await client.login(pg_broker)
    allowed = "SELECT id FROM waybills LIMIT 2"
    pipeline = [
        message(b"P", cstring("ok") + cstring(allowed) + b"\x00\x00"),
        message(b"B", cstring("") + cstring("ok") + b"\x00\x00\x00\x00\x00\x00"),
        execute(""),
        message(b"P", cstring("bulk") + cstring("SELECT * FROM waybills") + b"\x00\x00"),
        message(b"B", cstring("") + cstring("bulk") + b"\x00\x00\x00\x00\x00\x00"),  # discarded
        execute(""),  # discarded
        message(b"S"),
        message(b"Q", cstring("SELECT 1")),
    ]
    client.writer.write(b"".join(pipeline))
    answer = await client.until(b"Z")
    assert kinds(answer) == b"12DDCEZ"  # ParseComplete, BindComplete, 2 rows, done, our error, ready
    assert sqlstate(answer[5][1]) == "42501" and b"bulk.unbounded" in answer[5][1]
    assert kinds(await client.until(b"Z")) == b"TDCZ"
    await client.close()


async def test_an_unknown_cancel_key_is_ignored_and_each_session_gets_a_key_of_its_own(pg_broker: Harness) -> None:
    stranger = await RawClient.open(pg_broker.pg_port)
    stranger.writer.write(struct.pack("!IIII", 16, 80877102, 12345, 67890))
    assert await stranger.reader.read() == b""  # closed without a word, like PostgreSQL
    await stranger.close()
    conn = await psycopg.AsyncConnection.connect(pg_broker.pg_dsn("e1001"), autocommit=True)
    assert conn.info.backend_pid != 0  # the broker's own key, never the server's
    other = await psycopg.AsyncConnection.connect(pg_broker.pg_dsn("e1001"), autocommit=True)
    assert other.info.backend_pid != conn.info.backend_pid
    await other.close()
    await conn.close()


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    return self_signed(tmp_path)


async def test_tls_carries_the_token_when_a_certificate_is_configured(
    make_broker: BrokerFactory, pg_database: str, tls_files: tuple[Path, Path]
) -> None:
    cert, key = tls_files
    harness = await make_broker(postgres=door_settings(pg_database, tls_cert_file=cert, tls_key_file=key))
    conn = await psycopg.AsyncConnection.connect(
        harness.pg_dsn("e1001", sslmode="verify-full", sslrootcert=str(cert)), autocommit=True
    )
    assert conn.pgconn.ssl_in_use
    cur = await conn.execute("SELECT branch_code FROM waybills LIMIT 1")
    assert await cur.fetchall() == [("BR001",)]
    await conn.close()


async def test_bytes_sent_between_ssl_request_and_handshake_end_the_connection(
    make_broker: BrokerFactory, pg_database: str, tls_files: tuple[Path, Path]
) -> None:
    cert, key = tls_files
    harness = await make_broker(postgres=door_settings(pg_database, tls_cert_file=cert, tls_key_file=key))
    client = await RawClient.open(harness.pg_port)
    client.writer.write(struct.pack("!II", 8, SSL_REQUEST) + startup_message({"user": "e1001"}))
    answer = await asyncio.wait_for(client.reader.read(), 5)  # everything, up to the close
    found = MessageBuffer(1 << 20).feed(answer)  # no 'S' (no handshake), no password request
    assert [kind for kind, _ in found] == [b"E"]
    assert sqlstate(found[0][1]) == "08P01" and b"before the TLS handshake" in found[0][1]
    await client.close()


async def test_without_tls_a_token_from_another_host_is_refused(make_broker: BrokerFactory, pg_database: str) -> None:
    address = routable_address()
    if address is None:
        pytest.fail("this test needs a non-loopback IPv4 address on the machine")
    harness = await make_broker(postgres=door_settings(pg_database, host="0.0.0.0"))  # noqa: S104 - the point of the test
    with pytest.raises(psycopg.OperationalError) as caught:
        await psycopg.AsyncConnection.connect(harness.pg_dsn("e1001", host=address))
    assert "only over TLS" in str(caught.value)


@pytest.mark.parametrize(
    "packet",
    [
        struct.pack("!II", 8, 1234),  # an unknown protocol
        struct.pack("!I", 9) + struct.pack("!I", PROTOCOL_3_0) + b"u",  # a name without NUL
        struct.pack("!I", 13) + struct.pack("!I", PROTOCOL_3_0) + b"user\x00",  # a name without value
        struct.pack("!I", 100_000) + struct.pack("!I", PROTOCOL_3_0),  # longer than PostgreSQL allows
    ],
)
async def test_a_malformed_startup_gets_a_fatal_error_not_silence(pg_broker: Harness, packet: bytes) -> None:
    client = await RawClient.open(pg_broker.pg_port)
    client.writer.write(packet)
    kind, raw = await client.next()
    assert kind == b"E"
    assert error_fields(raw[5:])["S"] == "FATAL"
    assert sqlstate(raw) in ("08P01", "0A000")
    await client.close()


async def test_a_malformed_bind_ends_the_session_with_08P01(pg_broker: Harness) -> None:
    client = await RawClient.open(pg_broker.pg_port)
    await client.login(pg_broker)
    client.writer.write(message(b"P", cstring("s") + cstring("SELECT 1") + b"\x00\x00"))
    client.writer.write(message(b"B", cstring("") + cstring("s") + b"\x00\x05"))  # 5 formats, none sent
    kind, raw = await client.next()
    while kind != b"E":
        kind, raw = await client.next()
    assert sqlstate(raw) == "08P01" and b"protocol violation" in raw
    await client.close()


async def test_a_prepared_name_cannot_be_reused_to_run_an_old_statement_under_a_new_check(
    pg_broker: Harness,
) -> None:
    """Parse "r" (bounded by $1), then Parse "r" again with a table-less statement: the
    server keeps the first (42P05), so the broker must not decide later Binds of "r" as the
    second one — even with a Sync in between, where the server would run them."""
    client = await RawClient.open(pg_broker.pg_port)
    await client.login(pg_broker)
    first = message(b"P", cstring("r") + cstring("SELECT id, sender_phone FROM waybills LIMIT $1") + b"\x00\x00")
    client.writer.write(first + message(b"S"))
    assert kinds(await client.until(b"Z")) == b"1Z"
    again = message(b"P", cstring("r") + cstring("SELECT 1") + b"\x00\x00")
    bind = message(b"B", cstring("") + cstring("r") + b"\x00\x00\x00\x01\x00\x00\x00\x071000000\x00\x00")
    client.writer.write(again + message(b"S") + bind + execute("") + message(b"S"))
    answer = await client.until(b"Z")
    assert kinds(answer) == b"EZ" and sqlstate(answer[0][1]) == "42P05"
    answer = await client.until(b"Z")
    assert b"D" not in kinds(answer)  # no rows: the Bind was decided as "r" really is, over the cap
    assert sqlstate(answer[0][1]) == "42501" and b"bulk.over_cap" in answer[0][1]
    await client.close()


async def test_a_name_freed_by_deallocate_can_be_prepared_again(pg_broker: Harness) -> None:
    client = await RawClient.open(pg_broker.pg_port)
    await client.login(pg_broker)
    parse = message(b"P", cstring("r") + cstring("SELECT id FROM waybills LIMIT 1") + b"\x00\x00")
    client.writer.write(parse + message(b"S"))
    assert kinds(await client.until(b"Z")) == b"1Z"
    client.writer.write(message(b"Q", cstring("DEALLOCATE r")))
    assert kinds(await client.until(b"Z")) == b"CZ"
    client.writer.write(parse + message(b"S"))
    assert kinds(await client.until(b"Z")) == b"1Z"
    client.writer.write(message(b"Q", cstring("DEALLOCATE ALL")) + parse + message(b"S"))
    assert kinds(await client.until(b"Z")) == b"CZ"
    assert kinds(await client.until(b"Z")) == b"1Z"
    await client.close()


async def test_an_empty_password_is_refused_as_a_missing_token(pg_broker: Harness) -> None:
    client = await RawClient.open(pg_broker.pg_port)
    database = pg_broker.broker.settings.postgres.server_database
    client.writer.write(startup_message({"user": "e1001", "database": database}))
    assert (await client.next())[0] == b"R"
    client.writer.write(message(b"p", cstring("")))
    kind, raw = await client.next()
    assert kind == b"E" and sqlstate(raw) == "28P01" and b"no token was given" in raw
    await client.close()


async def test_a_bind_of_an_unknown_statement_and_an_execute_of_an_unknown_portal_are_refused(
    pg_broker: Harness,
) -> None:
    client = await RawClient.open(pg_broker.pg_port)
    await client.login(pg_broker)
    bind = message(b"B", cstring("") + cstring("nosuch") + b"\x00\x00\x00\x00\x00\x00")
    client.writer.write(bind + execute("") + message(b"S"))
    answer = await client.until(b"Z")
    assert kinds(answer) == b"EZ" and sqlstate(answer[0][1]) == "26000"
    client.writer.write(execute("nope") + message(b"S"))
    answer = await client.until(b"Z")
    assert kinds(answer) == b"EZ" and sqlstate(answer[0][1]) == "34000"
    client.writer.write(message(b"Q", cstring("SELECT 1")))
    assert kinds(await client.until(b"Z")) == b"TDCZ"
    await client.close()


async def test_a_database_that_cannot_be_reached_fails_the_login_with_08006(
    make_broker: BrokerFactory, pg_database: str
) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    harness = await make_broker(postgres=door_settings(pg_database, server_port=closed_port))
    client = await RawClient.open(harness.pg_port)
    database = harness.broker.settings.postgres.server_database
    client.writer.write(startup_message({"user": "e1001", "database": database}))
    assert (await client.next())[0] == b"R"
    client.writer.write(message(b"p", cstring(harness.token("e1001"))))
    kind, raw = await client.next()
    assert kind == b"E" and sqlstate(raw) == "08006" and b"database behind the broker is unavailable" in raw
    assert error_fields(raw[5:])["S"] == "FATAL"
    await client.close()


@pytest.mark.parametrize("name", ["\x01broker refused", "\x01", "a\x02b"])
async def test_a_client_cannot_name_the_brokers_own_portal(pg_broker: Harness, name: str) -> None:
    """Were a client able to bind the broker's refusal portal, the broker's refusals would
    execute the client's query instead: refused statements returned rows, uncharged."""
    client = await RawClient.open(pg_broker.pg_port)
    await client.login(pg_broker)
    client.writer.write(
        message(b"P", cstring("s") + cstring("SELECT id FROM waybills ORDER BY id LIMIT 5") + b"\x00\x00")
        + message(b"B", cstring(name) + cstring("s") + b"\x00\x00\x00\x00\x00\x00")
        + execute(name)
        + message(b"S")
    )
    seen = await client.until(b"Z")
    assert b"D" not in kinds(seen)  # no row reached the client
    errors = [error_fields(payload) for kind, payload in seen if kind == b"E"]
    assert errors and errors[0]["C"] == "42602" and "reserved by the access broker" in errors[0]["M"]
    # and a refused statement afterwards is still the broker's refusal, not a row source
    client.writer.write(message(b"Q", cstring("SELECT * FROM waybills")))
    seen = await client.until(b"Z")
    assert b"D" not in kinds(seen)
    assert [error_fields(p)["C"] for k, p in seen if k == b"E"] == ["42501"]
    await client.close()


async def test_a_statement_the_server_still_holds_cannot_be_swapped_for_a_tablefree_one(pg_broker: Harness) -> None:
    """Issue #13, finding 1: the server keeps d1 (its DEALLOCATE ran after an error and was
    skipped) and refuses the new Parse of d1 (42P05); a broker that believed d1 was now
    `SELECT 1` let Bind(d1, 100000) return 600 rows undecided and uncharged."""
    client = await RawClient.open(pg_broker.pg_port)
    await client.login(pg_broker)
    client.writer.write(parse("d1", "SELECT id, branch_code FROM waybills ORDER BY id LIMIT $1") + message(b"S"))
    assert b"1" in kinds(await client.until(b"Z"))  # ParseComplete
    client.writer.write(message(b"Q", cstring("SELECT 1/0; DEALLOCATE d1")))
    seen = await client.until(b"Z")
    assert [error_fields(p)["C"] for k, p in seen if k == b"E"] == ["22012"]  # division by zero; d1 stays
    client.writer.write(parse("d1", "SELECT 1") + message(b"S"))
    seen = await client.until(b"Z")
    assert b"1" not in kinds(seen)  # no ParseComplete: d1 is still taken, as at the server
    assert [error_fields(p)["C"] for k, p in seen if k == b"E"] == ["42P05"]
    client.writer.write(bind("", "d1", "100000") + execute("") + message(b"S"))
    seen = await client.until(b"Z")
    assert b"D" not in kinds(seen), f"{kinds(seen).count(b'D')} rows of an undecided statement reached the client"
    errors = [error_fields(p) for k, p in seen if k == b"E"]  # decided as the d1 the server holds: over the cap
    assert [e["C"] for e in errors] == ["42501"] and "bulk.over_cap" in errors[0]["M"]
    me = (await pg_broker.get("/-/me", "e1001")).json
    assert me["quotas"][0]["used"] == 0
    await client.close()


async def test_a_close_the_server_skips_cannot_swap_a_statement_either(pg_broker: Harness) -> None:
    client = await RawClient.open(pg_broker.pg_port)
    await client.login(pg_broker)
    client.writer.write(
        parse("d1", "SELECT id, branch_code FROM waybills ORDER BY id LIMIT $1")
        + parse("boom", "SELECT 1/0")
        + message(b"S")
    )
    await client.until(b"Z")
    # the Execute fails at the server, which then skips the Close up to the Sync: d1 stays
    client.writer.write(bind("", "boom") + execute("") + message(b"C", b"S" + cstring("d1")) + message(b"S"))
    assert [error_fields(p)["C"] for k, p in await client.until(b"Z") if k == b"E"] == ["22012"]
    client.writer.write(parse("d1", "SELECT 1") + message(b"S"))
    assert b"1" not in kinds(await client.until(b"Z"))  # refused (42P05): d1 is still its old self
    client.writer.write(bind("", "d1", "100000") + execute("") + message(b"S"))
    seen = await client.until(b"Z")
    assert b"D" not in kinds(seen)
    errors = [error_fields(p) for k, p in seen if k == b"E"]
    assert [e["C"] for e in errors] == ["42501"] and "bulk.over_cap" in errors[0]["M"]
    await client.close()
