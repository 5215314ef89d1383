"""Quotas shared across replicas in Redis, and what happens when Redis fails."""

from __future__ import annotations

import asyncio
import time

import pytest

from broker.config import MeterSettings
from broker.meter.redis_store import RedisCounterStore
from broker.meter.store import Admission, Gate, MemoryCounterStore, QuotaAsk, RateAsk, Reservation, StoreUnavailable
from tests.conftest import BrokerFactory
from tests.redis_fixtures import RedisOpener, RedisProcess

LIST = "/api/branches/BR001/waybills"
CUSTOMERS = "/api/branches/BR003/customers"


async def test_reserve_is_atomic_under_concurrency(shared_redis: tuple[str, str], redis_opener: RedisOpener) -> None:
    url, prefix = shared_redis
    # a generous timeout: 200 calls queue for 64 pooled connections on a busy machine;
    # this test is about atomicity, not latency
    store = redis_opener.store(url, prefix=prefix, timeout=3.0)
    now = time.time()
    results = await asyncio.gather(*(store.reserve("q", 1, 50, now + 60, now) for _ in range(200)))
    assert sum(r.granted for r in results) == 50
    assert await store.get("q", now) == 50
    assert await store.add("q", -80, now + 60, now) == 0  # never below zero
    ttl_ms = await redis_opener.client(url).pttl(f"{prefix}q")
    assert 60_000 < ttl_ms <= 121_000  # the window plus slack


async def test_rate_limits_agree_with_the_memory_store(
    shared_redis: tuple[str, str], redis_opener: RedisOpener
) -> None:
    url, prefix = shared_redis
    shared, local = redis_opener.store(url, prefix=prefix), MemoryCounterStore()
    start = 1_800_000_000.0
    offsets = [0, 0, 0, 0, 0.1, 0.2, 2.0, 2.0, 2.0, 12.0, 12.1, 30.0, 30.0, 30.0, 30.0]
    for offset in offsets:
        a = await shared.hit_rate("r", 5, 10, start + offset)
        b = await local.hit_rate("r", 5, 10, start + offset)
        assert (a.allowed, a.remaining) == (b.allowed, b.remaining), offset
        assert abs(a.retry_after - b.retry_after) < 1e-3 and abs(a.reset_after - b.reset_after) < 1e-3


async def test_burst_at_a_window_edge_cannot_double_the_rate(
    shared_redis: tuple[str, str], redis_opener: RedisOpener
) -> None:
    url, prefix = shared_redis
    store = redis_opener.store(url, prefix=prefix)
    edge = 1_800_000_059.9
    before = [await store.hit_rate("r", 10, 60, edge) for _ in range(10)]
    after = [await store.hit_rate("r", 10, 60, edge + 0.2) for _ in range(10)]
    assert all(r.allowed for r in before)
    assert sum(r.allowed for r in after) == 0  # a fixed window would have allowed 10 more


async def test_scripts_survive_a_script_cache_flush(shared_redis: tuple[str, str], redis_opener: RedisOpener) -> None:
    url, prefix = shared_redis
    store = redis_opener.store(url, prefix=prefix)
    now = time.time()
    await store.reserve("q", 1, 5, now + 60, now)
    await redis_opener.client(url).script_flush()
    assert (await store.reserve("q", 1, 5, now + 60, now)).used == 2


async def test_broker_meters_in_redis(make_broker: BrokerFactory, shared_redis: tuple[str, str]) -> None:
    url, prefix = shared_redis
    broker = await make_broker(meter=MeterSettings(store="redis", redis_url=url, key_prefix=prefix))
    assert (await broker.get(f"{LIST}?limit=7", "e1001")).status == 200
    me = (await broker.get("/-/me", "e1001")).json
    assert me["quotas"][0]["used"] == 7
    events = await broker.audit_events()
    assert events[-1]["meter"] == "shared"
    ready = (await broker.get("/-/readyz")).json
    assert {k: ready["counter_store"][k] for k in ("backend", "state", "breaker")} == {
        "backend": "redis",
        "state": "ok",
        "breaker": "closed",
    }


async def test_redis_down_fails_closed_fast_then_recovers(
    make_broker: BrokerFactory, redis_process: RedisProcess
) -> None:
    settings = MeterSettings(store="redis", redis_url=redis_process.url, timeout_seconds=0.2, breaker_reset_seconds=5)
    broker = await make_broker(meter=settings)
    assert (await broker.get(f"{LIST}?limit=1", "e1001")).status == 200
    redis_process.stop()
    started = time.monotonic()
    replies = [await broker.get(f"{LIST}?limit=1", "e1001") for _ in range(5)]
    elapsed = time.monotonic() - started
    assert elapsed < 2.5, f"5 requests against a dead Redis took {elapsed:.2f}s"
    for reply in replies:
        assert reply.status == 503 and reply.json["reason"] == "meter.unavailable"
        assert int(reply.headers["Retry-After"]) >= 1
    assert b"records" not in replies[-1].body or "items" not in replies[-1].json
    ready = (await broker.get("/-/readyz")).json
    assert ready["counter_store"]["state"] == "unavailable"
    events = await broker.audit_events(at_least=6)
    assert events[-1]["meter"] == "refused" and events[-1]["reason"] == "meter.unavailable"
    metrics = (await broker.get("/-/metrics")).body.decode()
    assert 'broker_meter_served_total{served="refused"}' in metrics
    # Redis comes back (empty: it kept nothing); after the breaker's cool-down it is used again
    redis_process.start()
    broker.clock.advance(6)
    assert (await broker.get(f"{LIST}?limit=1", "e1001")).status == 200
    assert (await broker.get("/-/readyz")).json["counter_store"]["state"] == "ok"


async def test_fail_open_resource_uses_local_fallback_limits(
    make_broker: BrokerFactory, redis_process: RedisProcess
) -> None:
    settings = MeterSettings(
        store="redis", redis_url=redis_process.url, timeout_seconds=0.2, fail_open=("customer",), fallback_scale=0.1
    )
    broker = await make_broker(meter=settings)
    redis_process.stop()
    # waybills fail closed (the default), customers fail open with 10% of the quota locally
    assert (await broker.get("/api/branches/BR003/waybills?limit=1", "e2001")).status == 503
    ok = await broker.get(f"{CUSTOMERS}?limit=100", "e2001")
    assert ok.status == 200 and len(ok.json["items"]) == 100
    events = await broker.audit_events(at_least=2)
    assert events[-1]["meter"] == "fallback"
    # the manager's customer quota is 1000 per shift; locally only 100 while Redis is away
    denied = await broker.get(f"{CUSTOMERS}?limit=1", "e2001")
    assert denied.status == 429 and denied.json["quota"]["limit"] == 100


async def test_slow_redis_is_bounded_by_the_timeout(
    make_broker: BrokerFactory, redis_process: RedisProcess, redis_opener: RedisOpener
) -> None:
    broker = await make_broker(meter=MeterSettings(store="redis", redis_url=redis_process.url, timeout_seconds=0.2))
    client = redis_opener.client(redis_process.url)
    sleeper = asyncio.create_task(client.execute_command("DEBUG", "SLEEP", "2"))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    reply = await broker.get(f"{LIST}?limit=1", "e1001")
    elapsed = time.monotonic() - started
    assert reply.status == 503 and reply.json["reason"] == "meter.unavailable"
    assert elapsed < 1.0, f"a stalled Redis held the request for {elapsed:.2f}s"
    await sleeper


async def test_admit_agrees_with_the_memory_store(shared_redis: tuple[str, str], redis_opener: RedisOpener) -> None:
    url, prefix = shared_redis
    shared, local = redis_opener.store(url, prefix=prefix), MemoryCounterStore()
    start = 1_800_000_000.0
    steps = [(0.0, 4), (0.0, 4), (0.1, 4), (0.2, 4), (0.3, 1), (5.0, 4), (5.0, 3), (20.0, 9), (20.0, 1)]
    for offset, amount in steps:
        rate = RateAsk("r:{e1}", 4, 10)
        quota = QuotaAsk("q:{e1}:waybill:0", amount, 12, start + 3600)
        a = await shared.admit(rate, quota, start + offset)
        b = await local.admit(rate, quota, start + offset)
        assert (a.rate and (a.rate.allowed, a.rate.remaining)) == (b.rate and (b.rate.allowed, b.rate.remaining))
        assert a.quota == b.quota, (offset, a.quota, b.quota)
    only_quota = await shared.admit(None, QuotaAsk("q:{e2}:x:0", 2, 3, start + 60), start)
    assert only_quota == Admission(None, Reservation(True, 2))
    only_rate = await shared.admit(RateAsk("r:{e2}", 1, 60), None, start)
    assert only_rate.rate is not None and only_rate.rate.allowed and only_rate.quota is None


async def test_a_closed_gate_admits_nothing_on_either_store(
    shared_redis: tuple[str, str], redis_opener: RedisOpener
) -> None:
    url, prefix = shared_redis
    shared, local = redis_opener.store(url, prefix=prefix), MemoryCounterStore()
    start = 1_800_000_000.0
    frozen, probe = Gate("f:{e3}", 1), Gate("p:{e3}:0", 2)
    rate, quota = RateAsk("r:{e3}", 100, 60), QuotaAsk("q:{e3}:waybill:0", 5, 100, start + 3600)
    for store in (shared, local):
        assert (await store.admit(rate, quota, start, (frozen, probe))).closed_gate is None
        await store.add(probe.key, 1, start + 3600, start)
        assert (await store.admit(rate, quota, start, (frozen, probe))).quota == Reservation(True, 10)
        await store.add(probe.key, 1, start + 3600, start)
        assert await store.admit(rate, quota, start, (frozen, probe)) == Admission(None, None, 1, 2)
        await store.add(frozen.key, 1, start + 3600, start)
        assert await store.admit(rate, quota, start, (frozen, probe)) == Admission(None, None, 0, 1)
        assert await store.get(quota.key, start) == 10  # the refused admissions charged nothing
        await store.add(frozen.key, -(1 << 40), start + 3600, start)  # unfrozen: back to the probe gate
        assert (await store.admit(rate, quota, start, (frozen, probe))).closed_gate == 1


async def test_a_redis_call_takes_at_most_the_timeout_even_waiting_for_a_connection(
    redis_process: RedisProcess, redis_opener: RedisOpener
) -> None:
    """One pooled connection, held by a stalled call: the next call waits for it and
    then would wait on its socket; the whole of it is bounded by `timeout`."""
    store = RedisCounterStore(redis_process.url, prefix="t:", timeout=0.3, connections=1)
    client = redis_opener.client(redis_process.url)
    sleeper = asyncio.create_task(client.execute_command("DEBUG", "SLEEP", "2"))
    await asyncio.sleep(0.1)
    first = asyncio.create_task(store.get("k", 0.0))
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await store.get("k", 0.0)
    assert time.monotonic() - started < 0.45
    with pytest.raises(StoreUnavailable):
        await first
    await store.close()
    await sleeper


async def test_a_quota_raise_counts_in_the_same_admission_on_either_store(
    shared_redis: tuple[str, str], redis_opener: RedisOpener
) -> None:
    url, prefix = shared_redis
    shared, local = redis_opener.store(url, prefix=prefix), MemoryCounterStore()
    start = 1_800_000_000.0
    rate, quota = RateAsk("r:{e4}", 100, 60), QuotaAsk("q:{e4}:waybill:0", 10, 20, start + 3600, "qr:{e4}:waybill")
    for store in (shared, local):
        assert (await store.admit(rate, quota, start)).quota == Reservation(True, 10, 0)
        assert (await store.admit(rate, quota, start)).quota == Reservation(True, 20, 0)
        assert (await store.admit(rate, quota, start)).quota == Reservation(False, 20, 0)
        assert await store.put("qr:{e4}:waybill", 15, start + 30, start) == 0
        assert await store.expires_in("qr:{e4}:waybill", start) == pytest.approx(30, abs=0.01)
        assert (await store.admit(rate, quota, start)).quota == Reservation(True, 30, 15)
        assert (await store.admit(rate, quota, start)).quota == Reservation(False, 30, 15)
        assert await store.put("qr:{e4}:waybill", 0, start + 30, start) == 15  # ended by hand
        assert await store.expires_in("qr:{e4}:waybill", start) is None
        assert (await store.admit(rate, quota, start)).quota == Reservation(False, 30, 0)
