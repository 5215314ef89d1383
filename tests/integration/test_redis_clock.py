"""Quota keys in Redis under a broker clock that disagrees with Redis's own.

The broker decides which window a request is in; Redis only keeps the key for as long as
that window has left. A broker clock a day or a year behind or ahead of Redis's must
still charge and refuse exactly, and the key must live as long as the window, no more.
"""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from broker.config import MeterSettings
from broker.core.clock import FakeClock
from broker.meter.meter import Meter, Served
from broker.meter.redis_store import EXPIRY_SLACK_MS, RedisCounterStore
from broker.meter.store import ExpiredWindow, MemoryCounterStore, QuotaAsk
from tests.conftest import BrokerFactory
from tests.harness import TUESDAY_10_SHANGHAI
from tests.redis_fixtures import RedisOpener

DAY = 86_400.0
YEAR = 365 * DAY
WEEK = 7 * DAY
SKEWS = pytest.mark.parametrize(
    "skew", [-YEAR, -DAY, DAY, YEAR], ids=["year-behind", "day-behind", "day-ahead", "year-ahead"]
)


@pytest.fixture
def redis_client(shared_redis: tuple[str, str], redis_opener: RedisOpener) -> aioredis.Redis:
    return redis_opener.client(shared_redis[0])


@pytest.fixture
def store(shared_redis: tuple[str, str], redis_opener: RedisOpener) -> RedisCounterStore:
    url, prefix = shared_redis
    return redis_opener.store(url, prefix=prefix)


async def redis_now(client: aioredis.Redis) -> float:
    seconds, micros = await client.time()
    return float(seconds) + micros / 1e6


@SKEWS
async def test_quota_charges_and_refuses_exactly_whatever_the_clocks_say(
    skew: float, store: RedisCounterStore, redis_client: aioredis.Redis, shared_redis: tuple[str, str]
) -> None:
    now = await redis_now(redis_client) + skew
    window_end = now + 3600
    first = await store.reserve("q:{e1}:waybill:1", 200, 300, window_end, now)
    second = await store.reserve("q:{e1}:waybill:1", 100, 300, window_end, now + 1)
    refused = await store.reserve("q:{e1}:waybill:1", 1, 300, window_end, now + 2)
    assert (first.granted, first.used) == (True, 200)
    assert (second.granted, second.used) == (True, 300)
    assert (refused.granted, refused.used) == (False, 300)
    # a settlement (fewer records came back) lands on the same, still living key
    assert await store.add("q:{e1}:waybill:1", -50, window_end, now + 3) == 250
    assert await store.get("q:{e1}:waybill:1", now + 4) == 250
    ttl_ms = await redis_client.pttl(f"{shared_redis[1]}q:{{e1}}:waybill:1")
    # the window's remaining hour (as the broker counts it) plus slack: never already gone,
    # never kept for the year between the two clocks
    assert 3_590_000 + EXPIRY_SLACK_MS < ttl_ms <= 3_600_000 + EXPIRY_SLACK_MS


@SKEWS
async def test_rate_key_lives_for_its_period_whatever_the_clocks_say(
    skew: float, store: RedisCounterStore, redis_client: aioredis.Redis, shared_redis: tuple[str, str]
) -> None:
    now = await redis_now(redis_client) + skew
    outcomes = [await store.hit_rate("r:{e1}", 3, 60, now) for _ in range(4)]
    assert [o.allowed for o in outcomes] == [True, True, True, False]
    ttl_ms = await redis_client.pttl(f"{shared_redis[1]}r:{{e1}}")
    assert 0 < ttl_ms <= 61_000


@pytest.mark.parametrize("ended_ago", [0.0, 0.001, 60.0, DAY])
async def test_a_window_that_has_ended_is_never_written(
    ended_ago: float, store: RedisCounterStore, redis_client: aioredis.Redis, shared_redis: tuple[str, str]
) -> None:
    now = await redis_now(redis_client)
    with pytest.raises(ExpiredWindow):
        await store.reserve("q:{e1}:waybill:2", 1, 300, now - ended_ago, now)
    with pytest.raises(ExpiredWindow):
        await store.add("q:{e1}:waybill:2", 1, now - ended_ago, now)
    assert await redis_client.exists(f"{shared_redis[1]}q:{{e1}}:waybill:2") == 0


async def test_the_meter_refuses_a_charge_to_an_ended_window_on_any_store() -> None:
    clock = FakeClock(TUESDAY_10_SHANGHAI)
    meter = Meter(MemoryCounterStore(), clock.now)
    ask = QuotaAsk("q:{e1}:waybill:3", 1, 300, clock.now() - 1)
    with pytest.raises(ExpiredWindow):
        await meter.admit("waybill", None, ask, clock.now())
    # a late settlement of a window that has ended changes nothing and does not fail
    assert await meter.settle(Served.LOCAL, "q:{e1}:waybill:3", 5, clock.now() - 1, clock.now()) is None
    assert await meter.used("q:{e1}:waybill:3", clock.now()) == 0
    await meter.close()


def tuesday_10_near(instant: float) -> float:
    """A Tuesday 10:00 in Shanghai (inside the demo couriers' day shift) near `instant`."""
    return TUESDAY_10_SHANGHAI + round((instant - TUESDAY_10_SHANGHAI) / WEEK) * WEEK


@pytest.mark.parametrize("weeks", [-52, -1, 1, 52], ids=["year-behind", "week-behind", "week-ahead", "year-ahead"])
async def test_broker_enforces_the_quota_in_redis_under_a_skewed_clock(
    weeks: int, make_broker: BrokerFactory, shared_redis: tuple[str, str], redis_client: aioredis.Redis
) -> None:
    url, prefix = shared_redis
    broker = await make_broker(meter=MeterSettings(store="redis", redis_url=url, key_prefix=prefix))
    broker.clock.set(tuesday_10_near(await redis_now(redis_client)) + weeks * WEEK)
    list_url = "/api/branches/BR001/waybills?limit=50"
    statuses = [(await broker.get(list_url, "e1001")).status for _ in range(11)]
    # a courier's waybill quota is 500 a shift, 50 a request: ten answers, then a refusal
    assert statuses == [200] * 10 + [429]
    refused = await broker.get(list_url, "e1001")
    assert refused.status == 429 and refused.json["reason"] == "quota.exceeded"
    assert refused.json["quota"]["remaining"] == 0
    keys = [key async for key in redis_client.scan_iter(match=f"{prefix}q:{{e1001}}:waybill:*")]
    assert len(keys) == 1
    assert await redis_client.pttl(keys[0]) > 0
