"""Real Redis for the tests: the machine's shared one with a private key prefix, and a
private redis-server the tests may stop and restart."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from broker.meter.redis_store import RedisCounterStore

SHARED_REDIS = "redis://127.0.0.1:6379/0"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def real_clock_environment() -> dict[str, str]:
    """This environment without libfaketime: CI runs the suite a second time with the
    test process's clock a year ahead, and a server we start stands for another machine,
    whose clock is the real one (redis-server also does not start under libfaketime)."""
    return {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "FAKETIME")}


class RedisProcess:
    """A redis-server of our own, so a test can kill and restart it."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: apt-get install redis-server")
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory), "--enable-debug-command", "local"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=real_clock_environment(),
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=self.port, socket_timeout=0.2).ping():
                    return
            except redis.RedisError:
                time.sleep(0.05)
        self.stop()
        pytest.fail(f"redis-server on port {self.port} did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture
def redis_process(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def shared_redis() -> AsyncIterator[tuple[str, str]]:
    """(url, key prefix) on the machine's Redis; fails, never skips, when it is missing."""
    client = aioredis.from_url(SHARED_REDIS, socket_timeout=1)
    try:
        await client.ping()
    except redis.RedisError as exc:
        await client.aclose()
        pytest.fail(f"the tests need Redis at {SHARED_REDIS}: {exc}")
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    yield SHARED_REDIS, prefix
    keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


class RedisOpener:
    """Opens Redis clients and counter stores for a test and closes every one of them at
    teardown, whether the test passed or not (a leaked connection is a ResourceWarning,
    which fails whichever test happens to be running when it is collected)."""

    def __init__(self) -> None:
        self._clients: list[aioredis.Redis] = []
        self._stores: list[RedisCounterStore] = []

    def client(self, url: str) -> aioredis.Redis:
        self._clients.append(aioredis.from_url(url))
        return self._clients[-1]

    def store(self, url: str, **options: Any) -> RedisCounterStore:
        self._stores.append(RedisCounterStore(url, **options))
        return self._stores[-1]

    async def close(self) -> None:
        for client in self._clients:
            await client.aclose()
        for store in self._stores:
            await store.close()


@pytest.fixture
async def redis_opener() -> AsyncIterator[RedisOpener]:
    opener = RedisOpener()
    yield opener
    await opener.close()
