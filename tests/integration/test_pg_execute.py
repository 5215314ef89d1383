"""Issue #13: every Execute is decided. A portal can be executed long after its Bind (a
suspended portal read in chunks inside a transaction), and a statement long after its
Parse: by then the token may have expired, the shift ended, or a reload moved the employee
to another branch. Each test keeps a portal open across such a change and asks for more."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.pg.wire import error_fields, execute
from tests.harness import Harness
from tests.pg_client import RawClient, bind, errors, kinds, parse, query, sync

pytestmark = pytest.mark.timeout(60)

READ = "SELECT id, branch_code FROM waybills ORDER BY id LIMIT $1"


async def suspended_portal(harness: Harness, employee: str = "e1001", *, token: str | None = None) -> RawClient:
    """A session inside a transaction, with portal "p" over READ(20) read 5 rows in."""
    client = await RawClient.open(harness.pg_port)
    await client.login(harness, employee, token)
    client.writer.write(query("BEGIN"))
    await client.until(b"Z")
    client.writer.write(parse("r", READ) + bind("p", "r", "20") + execute("p", 5) + sync())
    seen = await client.until(b"Z")
    assert kinds(seen) == b"12DDDDDsZ", kinds(seen)
    return client


def branches(seen: list[tuple[bytes, bytes]]) -> set[bytes]:
    return {raw.rsplit(b"\x00\x00\x00\x05", 1)[-1] for kind, raw in seen if kind == b"D"}


async def test_a_suspended_portal_goes_on_while_nothing_changed(pg_broker: Harness) -> None:
    client = await suspended_portal(pg_broker)
    pg_broker.clock.advance(60)
    client.writer.write(execute("p", 5) + sync())
    seen = await client.until(b"Z")
    assert kinds(seen) == b"DDDDDsZ" and branches(seen) == {b"BR001"}
    await client.close()


async def test_a_suspended_portal_stops_when_the_token_expires(pg_broker: Harness) -> None:
    client = await suspended_portal(pg_broker)  # the token lives an hour
    pg_broker.clock.advance(3700)
    client.writer.write(execute("p", 5) + sync())
    seen = await client.until(b"E")
    assert b"D" not in kinds(seen)
    found = error_fields(seen[-1][1][5:])
    assert found["C"] == "28P01" and found["S"] == "FATAL" and "expired" in found["M"]
    with pytest.raises((ConnectionError, TimeoutError)):  # the broker ended the session
        while True:
            assert (await client.next())[0] != b"D"
    await client.close()


async def test_a_suspended_portal_stops_when_the_shift_ends(pg_broker: Harness) -> None:
    client = await suspended_portal(pg_broker, token=pg_broker.token("e1001", ttl_seconds=12 * 3600))
    pg_broker.clock.advance(8.5 * 3600)  # 18:30 in Shanghai: the day shift ended at 18:00
    client.writer.write(execute("p", 5) + sync())
    seen = await client.until(b"Z")
    assert b"D" not in kinds(seen)
    assert [e["C"] for e in errors(seen)] == ["42501"] and "shift.outside" in errors(seen)[0]["M"]
    client.writer.write(execute("p", 5) + sync())  # and it stays stopped
    assert b"D" not in kinds(await client.until(b"Z"))
    await client.close()


async def test_a_table_free_portal_is_decided_at_each_execute_too(pg_broker: Harness) -> None:
    client = await RawClient.open(pg_broker.pg_port)
    await client.login(pg_broker, "e1001", pg_broker.token("e1001", ttl_seconds=12 * 3600))
    client.writer.write(query("BEGIN"))
    await client.until(b"Z")
    table_free = "SELECT x FROM (VALUES (1), (2), (3), (4)) AS v (x)"
    client.writer.write(parse("", table_free) + bind("p", "") + execute("p", 2) + sync())
    assert kinds(await client.until(b"Z")) == b"12DDsZ"
    pg_broker.clock.advance(9 * 3600)
    client.writer.write(execute("p", 2) + sync())
    seen = await client.until(b"Z")
    assert b"D" not in kinds(seen) and "shift.outside" in errors(seen)[0]["M"]
    await client.close()


async def test_a_statement_prepared_before_the_token_expired_cannot_run_after(pg_broker: Harness) -> None:
    client = await RawClient.open(pg_broker.pg_port)
    await client.login(pg_broker)
    client.writer.write(parse("one", "SELECT 1") + parse("r", READ) + sync())
    assert kinds(await client.until(b"Z")) == b"11Z"
    pg_broker.clock.advance(3700)
    client.writer.write(bind("", "one") + execute("") + sync())
    seen = await client.until(b"E")
    assert b"D" not in kinds(seen) and error_fields(seen[-1][1][5:])["C"] == "28P01"
    await client.close()


async def hired(harness: Harness, policy_dir: Path) -> None:
    """e1005, a day-shift clerk of BR001 (the shipped policy tests pin e1004 to BR001)."""
    roster = policy_dir / "roster.csv"
    roster.write_text(roster.read_text() + "\ng, e1005, clerk, BR001\ng2, e1005, day-cn\n")
    assert await harness.broker.reload("test")


def move(policy_dir: Path, old: str, new: str) -> None:
    roster = policy_dir / "roster.csv"
    text = roster.read_text()
    assert f"g, e1005, clerk, {old}" in text
    roster.write_text(text.replace(f"g, e1005, clerk, {old}", f"g, e1005, clerk, {new}"))


async def test_a_suspended_portal_stops_when_a_reload_moves_the_employee(pg_broker: Harness, policy_dir: Path) -> None:
    """Issue #13, finding 5: a portal suspended before a reload kept serving the old
    branch's rows after the employee was moved to another branch. The move now ends the
    session (its server session carries the old branches for row-level security, see
    broker.pg.row_security); a new one reads the new branch."""
    await hired(pg_broker, policy_dir)
    client = await suspended_portal(pg_broker, "e1005")  # a clerk of BR001
    move(policy_dir, "BR001", "BR002")
    assert await pg_broker.broker.reload("test")
    client.writer.write(execute("p", 5) + sync())
    seen = await client.until(b"E")
    assert b"D" not in kinds(seen), f"{kinds(seen).count(b'D')} rows of the old branch after the reload"
    found = errors(seen)
    assert [(e["S"], e["C"]) for e in found] == [("FATAL", "57P01")] and "branches changed" in found[0]["M"]
    assert "Reconnect" in found[0].get("H", "")
    after: list[tuple[bytes, bytes]] = []
    with pytest.raises(ConnectionError):  # the broker closes the connection (a ReadyForQuery may come first)
        while True:
            after.append(await client.next())
    assert kinds(after) in (b"", b"Z")
    await client.close()
    client = await RawClient.open(pg_broker.pg_port)
    await client.login(pg_broker, "e1005")
    client.writer.write(parse("r", READ) + bind("p", "r", "20") + execute("p", 5) + sync())
    seen = await client.until(b"Z")
    assert kinds(seen).count(b"D") == 5 and branches(seen) == {b"BR002"}
    await client.close()


async def test_a_suspended_portal_goes_on_after_a_reload_that_changes_nothing_for_it(
    pg_broker: Harness, policy_dir: Path
) -> None:
    await hired(pg_broker, policy_dir)
    client = await suspended_portal(pg_broker, "e1005")
    roster = policy_dir / "roster.csv"
    roster.write_text(roster.read_text() + "\n# a new revision that leaves e1005 where they are\n")
    assert await pg_broker.broker.reload("test")
    client.writer.write(execute("p", 5) + sync())
    seen = await client.until(b"Z")
    assert kinds(seen) == b"DDDDDsZ" and branches(seen) == {b"BR001"}
    await client.close()


async def test_a_suspended_portal_stops_when_a_reload_lowers_the_cap_below_it(
    pg_broker: Harness, policy_dir: Path
) -> None:
    await hired(pg_broker, policy_dir)
    client = await suspended_portal(pg_broker, "e1005")  # READ(20), within the clerk's cap of 100
    limits = policy_dir / "limits.csv"
    limits.write_text(
        limits.read_text().replace("p3, clerk, waybill, 100, 2000, shift", "p3, clerk, waybill, 10, 2000, shift")
    )
    assert await pg_broker.broker.reload("test")
    client.writer.write(execute("p", 5) + sync())
    seen = await client.until(b"Z")
    assert b"D" not in kinds(seen)
    assert [e["C"] for e in errors(seen)] == ["42501"] and "bulk.over_cap" in errors(seen)[0]["M"]
    await client.close()


async def test_a_suspended_portal_stops_when_a_reload_closes_its_table(pg_broker: Harness, policy_dir: Path) -> None:
    client = await suspended_portal(pg_broker)
    tables = policy_dir / "tables.toml"
    tables.write_text(tables.read_text().replace('name = "waybills"', 'name = "parcels"'))
    assert await pg_broker.broker.reload("test")
    client.writer.write(execute("p", 5) + sync())
    seen = await client.until(b"Z")
    assert b"D" not in kinds(seen)
    assert [e["C"] for e in errors(seen)] == ["42501"] and "waybills" in errors(seen)[0]["M"]
    await client.close()


async def test_a_table_free_portal_stops_when_a_reload_takes_the_employee_off_the_roster(
    pg_broker: Harness, policy_dir: Path
) -> None:
    await hired(pg_broker, policy_dir)
    client = await RawClient.open(pg_broker.pg_port)
    await client.login(pg_broker, "e1005")
    client.writer.write(query("BEGIN"))
    await client.until(b"Z")
    table_free = "SELECT x FROM (VALUES (1), (2), (3), (4)) AS v (x)"
    client.writer.write(parse("", table_free) + bind("p", "") + execute("p", 2) + sync())
    assert kinds(await client.until(b"Z")) == b"12DDsZ"
    roster = policy_dir / "roster.csv"
    roster.write_text(roster.read_text().replace("g, e1005, clerk, BR001", "").replace("g2, e1005, day-cn", ""))
    assert await pg_broker.broker.reload("test")
    client.writer.write(execute("p", 2) + sync())
    seen = await client.until(b"E")
    assert b"D" not in kinds(seen)
    found = error_fields(seen[-1][1][5:])
    assert found["S"] == "FATAL" and "identity.not_on_roster" in found["M"]
    await client.close()
