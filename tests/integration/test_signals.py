"""Catching a rented login while it is used (issue #14): the signals read off the audit
stream, the flag's evidence, the freeze on every replica, the webhook, and an honest
shift that raises nothing. Real sockets from several loopback addresses, real Redis."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from broker.config import MeterSettings
from broker.core.window import freeze_key
from broker.meter.redis_store import RedisCounterStore
from broker.policy.problem import PolicyError
from broker.policy.snapshot import load_snapshot
from broker.signals.act import set_frozen
from tests.conftest import BrokerFactory
from tests.harness import Harness
from tests.raw_upstream import RawUpstream
from tests.redis_fixtures import RedisProcess

REPO = Path(__file__).resolve().parents[2]
OWN_LIST = "/api/branches/BR001/waybills?limit=1"


def signals(policy_dir: Path, text: str) -> None:
    (policy_dir / "signals.toml").write_text(text)


async def get_from(broker: Harness, address: str, path: str, employee: str) -> tuple[int, dict[str, Any]]:
    """A request from another loopback address (Linux routes all of 127/8 to lo)."""
    connector = aiohttp.TCPConnector(local_addr=(address, 0))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(broker.url(path), headers={"Authorization": f"Bearer {broker.token(employee)}"}) as reply,
    ):
        return reply.status, await reply.json(content_type=None)


async def signal_events(broker: Harness, at_least: int = 1) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 5
    while True:
        found = [e for e in await broker.audit_events() if e.get("event") == "signal"]
        if len(found) >= at_least or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.05)


async def test_a_login_used_from_three_addresses_is_frozen_with_its_evidence(broker: Harness) -> None:
    for address in ("127.0.0.1", "127.0.0.2"):
        assert (await get_from(broker, address, OWN_LIST, "e1001"))[0] == 200  # two places: allowed
    status, _ = await get_from(broker, "127.0.0.3", OWN_LIST, "e1001")
    [flag] = await signal_events(broker)
    assert flag["signal"] == "shared_login" and flag["action"] == "freeze" and flag["employee"] == "e1001"
    assert flag["evidence"]["addresses"] == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    await asyncio.sleep(0.1)  # the freeze is written right after the flag
    status, body = await get_from(broker, "127.0.0.1", OWN_LIST, "e1001")
    assert status == 403 and body["reason"] == "identity.suspended" and "help desk" in body["detail"]
    # someone else is not affected; the employee's other door is (every admission checks)
    assert (await broker.get(OWN_LIST, "e1004")).status == 200
    metrics = (await broker.get("/-/metrics")).body.decode()
    assert 'broker_signals_total{action="freeze",signal="shared_login"} 1.0' in metrics
    # a person lifts the freeze
    await set_frozen(broker.broker.meter, "e1001", False, broker.clock.now())
    assert (await broker.get(OWN_LIST, "e1001")).status == 200


async def test_a_branch_allowance_raises_the_address_limit(make_broker: BrokerFactory, policy_dir: Path) -> None:
    signals(policy_dir, "[shared_login]\naddresses = 1\n[shared_login.branches]\nBR001 = 3\n")
    broker = await make_broker()
    for address in ("127.0.0.1", "127.0.0.2", "127.0.0.3"):
        assert (await get_from(broker, address, OWN_LIST, "e1001"))[0] == 200
    assert await signal_events(broker) == []
    assert (await get_from(broker, "127.0.0.4", OWN_LIST, "e1001"))[0] in (200, 403)
    assert [f["signal"] for f in await signal_events(broker)] == ["shared_login"]


async def test_a_burst_of_refusals_is_flagged_without_a_freeze(make_broker: BrokerFactory, policy_dir: Path) -> None:
    signals(policy_dir, '[probing]\nrefusals = 5\nwindow = "10m"\naction = "flag"\n')
    broker = await make_broker()
    for n in range(6):
        assert (await broker.get(f"/api/branches/BR00{2 + n % 2}/waybills?limit=1", "e1001")).status == 403
    [flag] = await signal_events(broker)
    assert flag["signal"] == "probing" and flag["evidence"]["refusals"] == 6
    assert flag["evidence"]["reasons"] == {"policy.other_branch": 6}
    assert len(flag["evidence"]["decision_ids"]) == 6
    assert (await broker.get(OWN_LIST, "e1001")).status == 200  # flagged, not frozen
    # one flag per window: more refusals raise no second one until it passes
    for _ in range(6):
        await broker.get("/api/branches/BR002/waybills?limit=1", "e1001")
    assert len(await signal_events(broker)) == 1
    broker.clock.advance(601)
    for _ in range(6):
        await broker.get("/api/branches/BR002/waybills?limit=1", "e1001")
    assert len(await signal_events(broker, 2)) == 2


async def test_walking_record_numbers_is_frozen_with_the_run(
    make_broker: BrokerFactory, policy_dir: Path, raw_upstream: RawUpstream
) -> None:
    signals(policy_dir, '[enumeration]\nrecords = 20\nwindow = "10m"\naction = "freeze"\n')
    for n in range(1000, 1030):
        raw_upstream.answer(f"/api/waybills/SF{n}", {"waybill_no": f"SF{n}", "branch_code": "BR001"})
    broker = await make_broker(raw_upstream.url)
    for n in range(1000, 1021):
        assert (await broker.get(f"/api/waybills/SF{n}", "e1001")).status == 200
    [flag] = await signal_events(broker)
    assert flag["signal"] == "enumeration" and flag["evidence"]["distinct_records"] == 21
    assert flag["evidence"]["longest_run"] == 21 and flag["evidence"]["run"] == "SF1000..SF1020"
    await asyncio.sleep(0.1)
    refused = await broker.get("/api/waybills/SF1021", "e1001")
    assert refused.status == 403 and refused.json["reason"] == "identity.suspended"


async def test_an_honest_shift_raises_nothing(broker: Harness) -> None:
    """A courier's day: lists of the own branch, a few dozen waybills looked up, a few
    refusals (a mistyped branch, an off-limits list), from one address."""
    listing = (await broker.get("/api/branches/BR001/waybills?limit=50", "e1001")).json["items"]
    for _ in range(20):
        assert (await broker.get("/api/branches/BR001/waybills?limit=20", "e1001")).status == 200
    for item in listing[:40]:
        assert (await broker.get(f"/api/waybills/{item['waybill_no']}", "e1001")).status == 200
    for _ in range(3):
        assert (await broker.get("/api/branches/BR002/waybills?limit=1", "e1001")).status == 403
    assert await signal_events(broker) == []
    metrics = (await broker.get("/-/metrics")).body.decode()
    assert "broker_signals_total{" not in metrics


async def test_the_webhook_receives_each_flag_even_after_a_failure(
    make_broker: BrokerFactory, policy_dir: Path
) -> None:
    received: list[dict[str, Any]] = []
    arrived = asyncio.Event()
    attempts = 0

    async def hook(request: web.Request) -> web.Response:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            return web.Response(status=500)
        received.append(await request.json())
        arrived.set()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/alert", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        signals(policy_dir, f'[probing]\nrefusals = 2\n[alert]\nwebhook = "http://127.0.0.1:{port}/alert"\n')
        broker = await make_broker()
        for _ in range(3):
            await broker.get("/api/branches/BR002/waybills?limit=1", "e1001")
        await asyncio.wait_for(arrived.wait(), 10)
    finally:
        await runner.cleanup()
    assert attempts == 2 and [r["signal"] for r in received] == ["probing"]
    assert received[0]["employee"] == "e1001" and received[0]["evidence"]["refusals"] == 3


async def test_a_freeze_holds_on_every_replica_and_across_a_restart(
    make_broker: BrokerFactory, shared_redis: tuple[str, str], tmp_path: Path
) -> None:
    url, prefix = shared_redis
    meter = MeterSettings(store="redis", redis_url=url, key_prefix=prefix)
    first, second = await make_broker(meter=meter), await make_broker(meter=meter)
    assert (await second.get(OWN_LIST, "e1001")).status == 200
    for address in ("127.0.0.1", "127.0.0.2", "127.0.0.3"):
        await get_from(first, address, OWN_LIST, "e1001")
    await signal_events(first)
    flagged_at = time.monotonic()
    while (await second.get(OWN_LIST, "e1001")).status != 403:
        assert time.monotonic() - flagged_at < 1.0, "the freeze did not reach the second replica within 1 s"
        await asyncio.sleep(0.02)
    restarted = await make_broker(meter=meter)
    refused = await restarted.get(OWN_LIST, "e1001")
    assert refused.status == 403 and refused.json["reason"] == "identity.suspended"
    # the help desk lifts it from the command line, against the same Redis
    config = tmp_path / "broker.toml"
    config.write_text(f'[meter]\nstore = "redis"\nredis_url = "{url}"\nkey_prefix = "{prefix}"\n')
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "broker", "unfreeze", "e1001", "-c", str(config)],
        capture_output=True, text=True, cwd=REPO, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0 and "e1001 is unfrozen" in done.stdout, done.stderr
    assert (await second.get(OWN_LIST, "e1001")).status == 200


def test_freeze_from_the_command_line_needs_the_shared_store(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "broker", "freeze", "e1001"],
        capture_output=True, text=True, cwd=REPO, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2 and 'store = "redis"' in done.stderr


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[shared_login]\naddresses = 0\n", "[shared_login] addresses = 0 must be a whole number from 1 up"),
        ('[probing]\nwindow = "10 minutes"\n', "[probing] window"),
        ('[enumeration]\naction = "ban"\n', 'action = \'ban\' must be "flag" or "freeze"'),
        ('[alert]\nwebhook = "ftp://x"\n', "must be an http:// or https:// URL"),
        ("[sharedlogin]\n", "unknown section [sharedlogin]"),
        ("[probing]\nrefusal = 3\n", "unknown keys refusal"),
    ],
)
def test_a_bad_signals_file_is_refused_with_its_reason(policy_dir: Path, text: str, problem: str) -> None:
    signals(policy_dir, text)
    with pytest.raises(PolicyError) as caught:
        load_snapshot(policy_dir)
    assert any(problem in str(p) for p in caught.value.problems), caught.value.problems


async def test_walking_numbers_is_seen_through_percent_encoding_and_other_id_shapes(
    make_broker: BrokerFactory, policy_dir: Path, raw_upstream: RawUpstream
) -> None:
    signals(policy_dir, '[enumeration]\nrecords = 10\nwindow = "10m"\naction = "flag"\n')
    for n in range(2000, 2012):
        raw_upstream.answer(f"/api/waybills/SF{n}", {"waybill_no": f"SF{n}", "branch_code": "BR001"})
    broker = await make_broker(raw_upstream.url)
    for n in range(2000, 2011):
        encoded = f"SF{str(n)[:-1]}%{ord(str(n)[-1]):02X}"  # the last digit percent-encoded
        await broker.get(f"/api/waybills/{encoded}", "e1001")
    [flag] = await signal_events(broker)
    assert flag["signal"] == "enumeration" and flag["evidence"]["run"] == "SF2000..SF2010"


async def test_a_freeze_set_elsewhere_holds_while_redis_is_away_and_the_resource_fails_open(
    make_broker: BrokerFactory, redis_process: RedisProcess
) -> None:
    settings = MeterSettings(
        store="redis",
        redis_url=redis_process.url,
        timeout_seconds=0.2,
        fail_open=("waybill",),
        breaker_reset_seconds=60,
    )
    broker = await make_broker(meter=settings)
    assert (await broker.get(OWN_LIST, "e1001")).status == 200
    other_replica = RedisCounterStore(redis_process.url, prefix=settings.key_prefix, timeout=0.5)
    try:  # `broker freeze e1001` on another machine
        now = broker.clock.now()
        await other_replica.add(freeze_key("e1001"), 1, now + 3600, now)
    finally:
        await other_replica.close()
    await asyncio.sleep(1.5)  # this replica mirrors the shared freezes every second
    redis_process.stop()
    refused = await broker.get(OWN_LIST, "e1001")
    assert refused.status == 403 and refused.json["reason"] == "identity.suspended"
    served = await broker.get(OWN_LIST, "e1004")  # everyone else is served from the local fallback
    assert served.status == 200
    events = await broker.audit_events(at_least=3)
    assert events[-1]["meter"] == "fallback"


COURIERS = ("e1101", "e1102", "e1103", "e1104")
"""Four more couriers of BR001 on e1001's day shift: e1001's peers."""


def more_couriers(policy_dir: Path) -> None:
    with (policy_dir / "roster.csv").open("a") as roster:
        roster.writelines(f"g, {e}, courier, BR001\n" for e in COURIERS)
    with (policy_dir / "shifts.csv").open("a") as shifts:
        shifts.writelines(f"g2, {e}, day-cn\n" for e in COURIERS)


async def peers_take(broker: Harness, requests: int) -> None:
    """Each peer reads their branch's list `requests` times, 20 waybills a time."""
    for employee in COURIERS:
        for _ in range(requests):
            assert (await broker.get("/api/branches/BR001/waybills?limit=20", employee)).status == 200


async def test_taking_far_more_than_the_peers_is_flagged_with_its_evidence(
    make_broker: BrokerFactory, policy_dir: Path
) -> None:
    more_couriers(policy_dir)
    signals(policy_dir, "[volume]\nfactor = 5\nmin_records = 200\n")
    broker = await make_broker()
    await peers_take(broker, 2)  # 40 records each
    for _ in range(4):  # 200: not more than 5 x 40
        assert (await broker.get("/api/branches/BR001/waybills?limit=50", "e1001")).status == 200
    assert await signal_events(broker) == []
    assert (await broker.get("/api/branches/BR001/waybills?limit=50", "e1001")).status == 200
    [flag] = await signal_events(broker)
    assert (flag["signal"], flag["employee"], flag["action"], flag["severity"]) == ("volume", "e1001", "flag", "medium")
    evidence = flag["evidence"]
    assert evidence["records"] == 250 and evidence["basis"] == "peers" and evidence["threshold"] == 201
    assert (evidence["peers"], evidence["peer_median"], evidence["peer_mean"]) == (4, 40, 40.0)
    assert evidence["peer_group"]["branches"] == {"BR001": ["courier"]}
    taken = [e["decision_id"] for e in await broker.audit_events() if e.get("employee") == "e1001" and "verdict" in e]
    assert evidence["decision_ids"] == taken[-5:] and evidence["last_decision_id"] == taken[-1]
    metrics = (await broker.get("/-/metrics")).body.decode()
    assert 'broker_signals_total{action="flag",signal="volume"} 1.0' in metrics
    assert (await broker.get(OWN_LIST, "e1001")).status == 200  # flagged, not frozen


async def test_with_action_freeze_the_next_request_is_refused(make_broker: BrokerFactory, policy_dir: Path) -> None:
    more_couriers(policy_dir)
    signals(policy_dir, '[volume]\nfactor = 5\nmin_records = 200\naction = "freeze"\n')
    broker = await make_broker()
    await peers_take(broker, 1)  # 20 records each
    for _ in range(3):  # 150 < min_records
        assert (await broker.get("/api/branches/BR001/waybills?limit=50", "e1001")).status == 200
    assert (await broker.get("/api/branches/BR001/waybills?limit=50", "e1001")).status == 200  # 200: flagged
    [flag] = await signal_events(broker)
    assert flag["signal"] == "volume" and flag["action"] == "freeze" and flag["severity"] == "high"  # 10 x 20
    await asyncio.sleep(0.1)  # the freeze is written right after the flag
    refused = await broker.get(OWN_LIST, "e1001")
    assert refused.status == 403 and refused.json["reason"] == "identity.suspended"
    assert (await broker.get(OWN_LIST, "e1101")).status == 200  # the peers are not affected
    metrics = (await broker.get("/-/metrics")).body.decode()
    assert 'broker_signals_total{action="freeze",signal="volume"} 1.0' in metrics


async def test_an_honest_peer_group_raises_no_volume_flag(make_broker: BrokerFactory, policy_dir: Path) -> None:
    """Five couriers of one branch reading unevenly (15 to 40 records a time) over a
    morning, each past min_records: nobody takes 5 x the others' median."""
    more_couriers(policy_dir)
    signals(policy_dir, "[volume]\nfactor = 5\nmin_records = 100\n")
    broker = await make_broker()
    for hour in range(5):
        for n, employee in enumerate(("e1001", *COURIERS)):
            limit = (15, 25, 40, 20, 30)[(n + hour) % 5]
            assert (await broker.get(f"/api/branches/BR001/waybills?limit={limit}", employee)).status == 200
        broker.clock.advance(3600)
    assert await signal_events(broker) == []


async def test_a_login_rotating_through_many_addresses_keeps_its_evidence_bounded(broker: Harness) -> None:
    """A frozen login sent on from ever new addresses (an IPv6 /64 holds 2^64 of them):
    each one was kept for the whole window, swept in full at every request, and listed
    in the next flag's evidence, so one login could grow the broker's memory, stall its
    event loop and write audit lines of any size. What is kept stays a few past the
    allowance, and the signal still fires."""
    for address in ("127.0.0.1", "127.0.0.2", "127.0.0.3"):
        await get_from(broker, address, OWN_LIST, "e1001")
    assert len(await signal_events(broker)) == 1
    broker.clock.advance(250)
    for n in range(60):
        status, _ = await get_from(broker, f"127.0.1.{n + 1}", OWN_LIST, "e1001")
        assert status == 403  # frozen, but still seen
    broker.clock.advance(60)  # the first flag's quiet window is over; the 60 are in the window
    await get_from(broker, "127.0.2.1", OWN_LIST, "e1001")
    [_, second] = await signal_events(broker, 2)
    assert second["signal"] == "shared_login" and "127.0.2.1" in second["evidence"]["addresses"]
    assert 2 < len(second["evidence"]["addresses"]) <= 2 + 10  # before: all 61 of them
