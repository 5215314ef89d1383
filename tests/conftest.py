"""Shared fixtures: a real upstream, a real broker, both on loopback sockets."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from broker.app import BrokerRunner, build_app, build_broker, server_options
from broker.config import MeterSettings, Settings
from broker.core.clock import FakeClock
from broker.demo.upstream import build_upstream_app
from broker.meter.store import CounterStore
from tests.harness import SECRET, TUESDAY_10_SHANGHAI, Harness, door_settings, free_port, rogue_upstream_app

REPO = Path(__file__).resolve().parent.parent
pytest_plugins = ["tests.redis_fixtures", "tests.pg_fixtures", "tests.raw_upstream"]


class BrokerTestServer(TestServer):
    """The broker's app served as `broker run` serves it: its own runner, whose request
    handler sends upstream-bound requests past aiohttp's router."""

    async def _make_runner(self, **kwargs: Any) -> BrokerRunner:
        # aiohttp's TestServer cancels a handler whose client hung up; `broker run` does
        # not (aiohttp's default), so neither do the tests: a hang-up meets the same code
        kwargs["handler_cancellation"] = False
        return BrokerRunner(self.app, **kwargs)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(TUESDAY_10_SHANGHAI)


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(REPO / "policies", target)
    return target


BrokerFactory = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def upstream() -> AsyncIterator[TestServer]:
    server = TestServer(build_upstream_app(waybill_count=1200), host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


@pytest.fixture
async def make_broker(
    tmp_path: Path, clock: FakeClock, policy_dir: Path, upstream: TestServer
) -> AsyncIterator[BrokerFactory]:
    started: list[Harness] = []

    async def factory(
        upstream_url: str | None = None,
        *,
        watch: bool = False,
        store: CounterStore | None = None,
        meter: MeterSettings | None = None,
        shadow: Path | None = None,
        identity: dict[str, Any] | None = None,
        postgres: dict[str, Any] | None = None,
        server: dict[str, Any] | None = None,
        audit: dict[str, Any] | None = None,
        console: dict[str, Any] | None = None,
        oidc: dict[str, Any] | None = None,
        **upstream_settings: Any,
    ) -> Harness:
        settings = Settings()
        port = free_port() if oidc is not None else None  # the redirect URI names the broker's port
        settings = replace(
            settings,
            upstream=replace(
                settings.upstream, url=upstream_url or str(upstream.make_url("")).rstrip("/"), **upstream_settings
            ),
            identity=replace(settings.identity, hs256_secret=SECRET, **(identity or {})),
            policy=replace(settings.policy, directory=policy_dir, watch=watch, shadow_directory=shadow),
            audit=replace(settings.audit, **{"path": str(tmp_path / f"audit-{len(started)}.log"), **(audit or {})}),
            meter=meter or settings.meter,
            postgres=replace(settings.postgres, **postgres) if postgres else settings.postgres,
            server=replace(settings.server, **server) if server else settings.server,
            console=replace(settings.console, **console) if console else settings.console,
            oidc=replace(settings.oidc, **{"public_url": f"http://127.0.0.1:{port}", **oidc})
            if oidc
            else settings.oidc,
        )
        broker = build_broker(settings, clock=clock, store=store)
        server = BrokerTestServer(build_app(broker), host="127.0.0.1", port=port)
        # TestServer's constructor ignores server options; start_server hands them to
        # the runner, so the tests read requests exactly as `broker run` does
        await server.start_server(**server_options(settings))
        harness = Harness(broker, server, clock, Path(settings.audit.path), aiohttp.ClientSession())
        started.append(harness)
        return harness

    yield factory
    for harness in started:
        await harness.session.close()
        await harness.server.close()


@pytest.fixture
async def broker(make_broker: BrokerFactory) -> Harness:
    """The shipped policy in front of the demo upstream, at Tuesday 10:00 in Shanghai."""
    return await make_broker()


@pytest.fixture
async def pg_broker(make_broker: BrokerFactory, pg_database: str) -> Harness:
    """The shipped policy with the PostgreSQL door open in front of the seeded database."""
    return await make_broker(postgres=door_settings(pg_database))


@pytest.fixture
async def rogue() -> AsyncIterator[TestServer]:
    server = TestServer(rogue_upstream_app(), host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()
