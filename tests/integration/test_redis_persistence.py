"""A Redis that forgets its counters on restart hands out fresh quotas: operators are told."""

from __future__ import annotations

import redis.asyncio as aioredis
from structlog.testing import capture_logs

from broker.config import MeterSettings
from tests.conftest import BrokerFactory
from tests.redis_fixtures import RedisProcess


async def configure(url: str, **settings: str) -> None:
    async with aioredis.from_url(url) as client:
        for name, value in settings.items():
            await client.config_set(name, value)


def store_metric(metrics: str) -> str:
    return next(line for line in metrics.splitlines() if line.startswith("broker_meter_store_persistent "))


async def test_redis_without_persistence_is_reported(make_broker: BrokerFactory, redis_process: RedisProcess) -> None:
    # the private redis-server starts with --save "" --appendonly no
    with capture_logs() as logs:
        broker = await make_broker(meter=MeterSettings(store="redis", redis_url=redis_process.url))
    warnings = [e for e in logs if e["event"] == "meter.store_not_persistent"]
    assert len(warnings) == 1 and warnings[0]["log_level"] == "warning"
    assert "fresh quota" in warnings[0]["detail"]
    ready = await broker.get("/-/readyz")
    assert ready.status == 200  # a warning, not an outage
    store = ready.json["counter_store"]
    assert store["persistent"] is False and "appendonly" in store["warning"]
    assert store_metric((await broker.get("/-/metrics")).body.decode()) == "broker_meter_store_persistent 0.0"


async def test_rdb_snapshots_alone_are_reported(make_broker: BrokerFactory, redis_process: RedisProcess) -> None:
    await configure(redis_process.url, save="3600 1")
    broker = await make_broker(meter=MeterSettings(store="redis", redis_url=redis_process.url))
    store = (await broker.get("/-/readyz")).json["counter_store"]
    assert store["persistent"] is False
    assert "3600 1" in store["warning"] and "since the last" in store["warning"]


async def test_append_only_redis_is_durable(make_broker: BrokerFactory, redis_process: RedisProcess) -> None:
    await configure(redis_process.url, appendonly="yes")
    with capture_logs() as logs:
        broker = await make_broker(meter=MeterSettings(store="redis", redis_url=redis_process.url))
    assert not [e for e in logs if e["event"] == "meter.store_not_persistent"]
    store = (await broker.get("/-/readyz")).json["counter_store"]
    assert store == {"backend": "redis", "state": "ok", "breaker": "closed", "persistent": True}
    assert store_metric((await broker.get("/-/metrics")).body.decode()) == "broker_meter_store_persistent 1.0"


async def test_unreadable_persistence_is_unknown_not_fine(
    make_broker: BrokerFactory, redis_process: RedisProcess
) -> None:
    redis_process.stop()
    with capture_logs() as logs:
        broker = await make_broker(meter=MeterSettings(store="redis", redis_url=redis_process.url, timeout_seconds=0.2))
    warnings = [e for e in logs if e["event"] == "meter.store_not_persistent"]
    assert len(warnings) == 1 and "could not read" in warnings[0]["detail"]
    store = (await broker.get("/-/readyz")).json["counter_store"]
    assert store["persistent"] is None and "could not read" in store["warning"]
