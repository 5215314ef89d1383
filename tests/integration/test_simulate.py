"""`broker demo --simulate`'s traffic against the shipped signals (issue #14), measured: a
whole honest day raises no flag, and each scrape is flagged well within a minute of its
first request. Played over real sockets on the broker's fake clock, so a day takes
seconds and the figures are the plan's own time, not the machine's speed."""

from __future__ import annotations

import json
from pathlib import Path

from aiohttp.test_utils import TestServer

from broker.core.clock import parse_instant
from broker.demo.simulate import Player
from broker.demo.traffic import enumeration_scrape, honest_day, shared_login_scrape
from broker.demo.upstream import build_upstream_app
from tests.conftest import BrokerFactory
from tests.harness import SECRET, Harness

MONDAY_8_SHANGHAI = parse_instant("2026-11-30T08:00:00+08:00")


def signal_events(audit: Path) -> list[dict[str, object]]:
    return [e for e in map(json.loads, audit.read_text().splitlines()) if e.get("event") == "signal"]


async def test_an_honest_simulated_day_raises_no_flag(make_broker: BrokerFactory) -> None:
    broker = await make_broker()
    broker.clock.set(MONDAY_8_SHANGHAI)
    player = Player(broker.url(""), SECRET, broker.clock.now)
    visits = honest_day()
    try:
        played = await player.play(visits, set_clock=lambda at: broker.clock.set(MONDAY_8_SHANGHAI + at))
    finally:
        await player.close()
    await broker.audit_events(len(visits))
    assert len(visits) > 1000 and played.statuses[200] > 0.9 * len(visits), played.statuses
    assert 429 not in played.statuses, played.statuses  # nobody ran out of quota or rate
    assert signal_events(broker.audit_path) == []


async def test_each_scrape_is_flagged_within_a_minute_of_its_first_request(make_broker: BrokerFactory) -> None:
    upstream = TestServer(build_upstream_app(waybill_count=6000), host="127.0.0.1")  # 500 a branch
    await upstream.start_server()
    try:
        await scrapes_flagged(await make_broker(str(upstream.make_url("")).rstrip("/")))
    finally:
        await upstream.close()


async def scrapes_flagged(broker: Harness) -> None:
    broker.clock.set(MONDAY_8_SHANGHAI)
    morning = [v for v in honest_day() if v.at < 3600]
    shared, enumeration = shared_login_scrape(1800), enumeration_scrape(2400)
    visits = sorted(morning + shared + enumeration, key=lambda v: v.at)
    player = Player(broker.url(""), SECRET, broker.clock.now)
    try:
        await player.play(visits, set_clock=lambda at: broker.clock.set(MONDAY_8_SHANGHAI + at))
    finally:
        await player.close()
    await broker.audit_events(len(visits))
    flags = {str(e["signal"]): e for e in signal_events(broker.audit_path)}
    assert sorted(flags) == ["enumeration", "shared_login"]
    assert flags["shared_login"]["employee"] == "e1001" and flags["enumeration"]["employee"] == "e1004"
    after = {
        "shared_login": parse_instant(str(flags["shared_login"]["time"])) - (MONDAY_8_SHANGHAI + shared[0].at),
        "enumeration": parse_instant(str(flags["enumeration"]["time"])) - (MONDAY_8_SHANGHAI + enumeration[0].at),
    }
    print(f"seconds from a scrape's first request to its flag: {after}")
    assert after["shared_login"] <= 1 and after["enumeration"] <= 60, after
    refused = await broker.get("/api/branches/BR001/waybills?limit=1", "e1004")
    assert refused.status == 403 and refused.json["reason"] == "identity.suspended"
