"""Two broker processes sharing one Redis: one quota, charged exactly what was returned."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from broker.identity.jwt_authenticator import mint_token
from tests.harness import SECRET, TUESDAY_10_SHANGHAI
from tests.redis_fixtures import RedisOpener, free_port

REPO = Path(__file__).resolve().parents[2]
CLOCK = "2026-12-01T10:00:00+08:00"


async def start_replica(
    tmp_path: Path, name: str, upstream: str, redis_url: str, prefix: str
) -> tuple[asyncio.subprocess.Process, int, Path]:
    port = free_port()
    audit = tmp_path / f"{name}-audit.log"
    config = tmp_path / f"{name}.toml"
    # A generous store timeout: this test is about sharing one quota correctly while two
    # brokers, the upstream and 100 concurrent clients share two cores, not about latency.
    config.write_text(
        f'[server]\nport = {port}\n[upstream]\nurl = "{upstream}"\n'
        f'[policy]\ndirectory = "{REPO / "policies"}"\nwatch = false\n'
        f'[meter]\nstore = "redis"\nredis_url = "{redis_url}"\nkey_prefix = "{prefix}"\ntimeout_seconds = 2.0\n'
        f'[audit]\npath = "{audit}"\n'
    )
    env = {**os.environ, "BROKER_DEV_SECRET": SECRET, "BROKER_CLOCK": CLOCK}
    log = (tmp_path / f"{name}.out").open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broker", "run", "-c", str(config), env=env, stdout=log, stderr=log
    )
    log.close()
    for _ in range(200):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
            return process, port, audit
        except OSError:
            await asyncio.sleep(0.05)
    pytest.fail(f"replica {name} did not start: {(tmp_path / f'{name}.out').read_text()}")


@pytest.fixture
async def replicas(
    tmp_path: Path, upstream: TestServer, shared_redis: tuple[str, str]
) -> AsyncIterator[list[tuple[int, Path]]]:
    url, prefix = shared_redis
    base = str(upstream.make_url("")).rstrip("/")
    started = [await start_replica(tmp_path, name, base, url, prefix) for name in ("a", "b")]
    yield [(port, audit) for _, port, audit in started]
    for process, _, _ in started:
        process.terminate()
        await process.wait()


async def test_two_replicas_share_one_quota_and_charge_what_was_returned(
    replicas: list[tuple[int, Path]], shared_redis: tuple[str, str], redis_opener: RedisOpener
) -> None:
    token = mint_token(SECRET, "e1001", now=TUESDAY_10_SHANGHAI)
    headers = {"Authorization": f"Bearer {token}"}
    (port_a, audit_a), (port_b, audit_b) = replicas
    async with aiohttp.ClientSession(headers=headers) as session:
        probe = f"http://127.0.0.1:{port_a}/api/branches/BR001/waybills?limit=1"
        async with session.get(probe) as reply:
            total = (await reply.json())["total"]

        async def one(i: int) -> int:
            port = port_a if i % 2 else port_b
            # every third request reads the tail of the list: it asks for 10, gets 3
            offset = total - 3 if i % 3 == 0 else 0
            url = f"http://127.0.0.1:{port}/api/branches/BR001/waybills?limit=10&offset={offset}"
            async with session.get(url) as reply:
                await reply.read()
                return reply.status

        statuses = await asyncio.gather(*(one(i) for i in range(100)))
    assert set(statuses) <= {200, 429}
    # 499 records are left after the probe. Each request reserves the 10 it asks for and is
    # settled to what came back, so even when every reservation lands before any settlement
    # 49 of them fit: fewer would mean a refusal with room left.
    assert statuses.count(200) >= 49

    events = []
    for audit in (audit_a, audit_b):
        for _ in range(100):
            lines = audit.read_text().splitlines() if audit.exists() else []
            if len(lines) >= 1:
                break
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    for audit in (audit_a, audit_b):
        events += [json.loads(line) for line in audit.read_text().splitlines()]
    events = [e for e in events if e["event"] == "decision"]
    assert len(events) == 101
    returned = sum(e["records_returned"] for e in events)
    assert {e["meter"] for e in events} == {"shared"}
    assert sum(1 for e in events if e["reason"] == "quota.exceeded") == statuses.count(429)

    url, prefix = shared_redis
    client = redis_opener.client(url)
    keys = [key async for key in client.scan_iter(match=f"{prefix}q:{{e1001}}:waybill:*")]
    assert len(keys) == 1
    charged = int(await client.get(keys[0]))
    assert charged == returned
    assert charged <= 500
