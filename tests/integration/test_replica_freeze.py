"""How fast a freeze reaches another replica (#14: "on every replica within 1 s"): two
`broker run` processes sharing one Redis; a signal raised on replica A freezes the
employee, and replica B is asked for that employee's records back to back until it
refuses them. Measured from the client's side: from the answer of the request that
raised the flag on A to B's first `403 identity.suspended`. The figures are printed
(`pytest -s`) and held under a second."""

from __future__ import annotations

import asyncio
import shutil
import statistics
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from broker.identity.jwt_authenticator import mint_token
from tests.harness import SECRET, TUESDAY_10_SHANGHAI, free_port, start_broker_process

REPO = Path(__file__).resolve().parents[2]
CLOCK = "2026-12-01T10:00:00+08:00"
"""A Tuesday, 10:00 in Shanghai: inside the day shift (the replicas' clocks run on from it)."""
COURIERS = ("e1101", "e1102", "e1103", "e1104")
OWN_LIST = "/api/branches/BR001/waybills?limit=1"
WITHIN = 1.0
SERVED_MEANWHILE: dict[str, int] = {}


class Replica:
    def __init__(self, port: int, session: aiohttp.ClientSession) -> None:
        self.port = port
        self.session = session

    async def get(self, path: str, employee: str, address: str = "127.0.0.1") -> tuple[int, str]:
        headers = {"Authorization": f"Bearer {mint_token(SECRET, employee, now=TUESDAY_10_SHANGHAI)}"}
        connector = aiohttp.TCPConnector(local_addr=(address, 0)) if address != "127.0.0.1" else None
        session = aiohttp.ClientSession(connector=connector) if connector else self.session
        try:
            async with session.get(f"http://127.0.0.1:{self.port}{path}", headers=headers) as reply:
                body = await reply.json(content_type=None)
                return reply.status, str(body.get("reason", "")) if isinstance(body, dict) else ""
        finally:
            if connector:
                await session.close()


def policies(tmp_path: Path) -> Path:
    """The shipped policy, four more couriers in BR001, and the volume signal freezing."""
    target = tmp_path / "policies"
    shutil.copytree(REPO / "policies", target)
    with (target / "roster.csv").open("a") as roster:
        roster.writelines(f"g, {e}, courier, BR001\n" for e in COURIERS)
    with (target / "shifts.csv").open("a") as shifts:
        shifts.writelines(f"g2, {e}, day-cn\n" for e in COURIERS)
    signals = (target / "signals.toml").read_text()
    signals = signals.replace("min_records = 500", "min_records = 200").replace(
        'window = "shift"\naction = "flag"', 'window = "shift"\naction = "freeze"'
    )
    assert 'action = "freeze"' in signals.split("[volume]")[1].split("[alert]")[0]
    (target / "signals.toml").write_text(signals)
    return target


@pytest.fixture
async def two_replicas(
    tmp_path: Path, upstream: TestServer, shared_redis: tuple[str, str]
) -> AsyncIterator[tuple[Replica, Replica]]:
    url, prefix = shared_redis
    directory = policies(tmp_path)
    processes: list[subprocess.Popen[bytes]] = []
    ports = []
    for name in ("a", "b"):
        port = free_port()
        config = tmp_path / f"{name}.toml"
        config.write_text(
            f'[server]\nport = {port}\n[upstream]\nurl = "{str(upstream.make_url("")).rstrip("/")}"\n'
            f'[policy]\ndirectory = "{directory}"\nwatch = false\n'
            f'[meter]\nstore = "redis"\nredis_url = "{url}"\nkey_prefix = "{prefix}"\n'
            f'[audit]\npath = "{tmp_path / f"{name}-audit.log"}"\n'
        )
        env = {"BROKER_DEV_SECRET": SECRET, "BROKER_CLOCK": CLOCK}
        processes.append(await asyncio.to_thread(start_broker_process, config, env, wait_port=port))
        ports.append(port)
    async with aiohttp.ClientSession() as session:
        yield Replica(ports[0], session), Replica(ports[1], session)
    for process in processes:
        process.terminate()
        await asyncio.to_thread(process.wait, 10)


async def refused_on(replica: Replica, employee: str, since: float, path: str = OWN_LIST) -> float:
    """Seconds from `since` until `replica` answers `employee` 403 identity.suspended
    (requests that B still served are counted in `SERVED_MEANWHILE`)."""
    while True:
        status, reason = await replica.get(path, employee)
        if status == 403 and reason == "identity.suspended":
            return time.perf_counter() - since
        SERVED_MEANWHILE[employee] = SERVED_MEANWHILE.get(employee, 0) + 1
        assert time.perf_counter() - since < 5, f"{employee} still served by the other replica: {status} {reason}"


async def test_a_freeze_reaches_the_other_replica_within_a_second(two_replicas: tuple[Replica, Replica]) -> None:
    first, second = two_replicas
    figures: dict[str, float] = {}
    # the volume signal: four couriers take 20 records each on A, e1001 takes 200
    for courier in COURIERS:
        assert (await first.get("/api/branches/BR001/waybills?limit=20", courier))[0] == 200
    assert (await second.get(OWN_LIST, "e1001"))[0] == 200
    for _ in range(3):
        assert (await first.get("/api/branches/BR001/waybills?limit=50", "e1001"))[0] == 200
    assert (await first.get("/api/branches/BR001/waybills?limit=49", "e1001"))[0] == 200  # 199 + 1 above
    assert (await first.get("/api/branches/BR001/waybills?limit=1", "e1001"))[0] == 200  # 200: flagged, frozen
    figures["volume e1001"] = await refused_on(second, "e1001", time.perf_counter())
    # the shared login: each employee's token from three addresses on A
    for employee in ("e1003", "e1004", "e2001", "e9001"):
        branch = "BR003" if employee == "e2001" else "BR001"  # e9001 is HQ: any branch
        for address in ("127.0.0.2", "127.0.0.3"):
            assert (await first.get(f"/api/branches/{branch}/waybills?limit=1", employee, address))[0] == 200
        await first.get(f"/api/branches/{branch}/waybills?limit=1", employee, "127.0.0.4")  # flagged, frozen
        own = f"/api/branches/{branch}/waybills?limit=1"
        figures[f"shared_login {employee}"] = await refused_on(second, employee, time.perf_counter(), own)
    shown = ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in figures.items())
    median = statistics.median(figures.values()) * 1000
    print(f"\nfreeze on A -> refused on B: {shown}; median {median:.1f} ms; served meanwhile: {SERVED_MEANWHILE}")
    assert max(figures.values()) < WITHIN, shown
