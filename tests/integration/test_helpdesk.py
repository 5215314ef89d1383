"""`broker helpdesk` from the help desk's side (issue #17): the command run as a process
against running brokers (their admin listeners), the employee's requests before and
after, the audit event each action leaves, a raise ending by itself (in memory on the
broker's clock, in Redis on Redis's), replicas sharing one action, and every refusal
with its message and exit code."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from broker.app import admin_app
from broker.config import MeterSettings
from broker.meter.store import MemoryCounterStore, StoreUnavailable
from tests.conftest import BrokerFactory
from tests.harness import Harness, free_port

TOKEN = "console-test-token-0123456789"
OWN_20 = "/api/branches/BR001/waybills?limit=20"


@dataclass
class Ran:
    code: int
    out: str
    err: str


@dataclass
class Desk:
    """A broker with its console (and so its help-desk API) on an admin listener."""

    broker: Harness
    admin: TestServer

    @property
    def url(self) -> str:
        return str(self.admin.make_url("")).rstrip("/")

    async def run(self, *args: str, token: str | None = TOKEN, brokers: list[str] | None = None) -> Ran:
        """`broker helpdesk ARGS --broker URL` as the help desk would type it."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_HELPDESK")}
        if token is not None:
            env["BROKER_HELPDESK_TOKEN"] = token
        where = [a for url in (brokers or [self.url]) for a in ("--broker", url)]
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "broker", "helpdesk", *args, *where,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        out, err = await process.communicate()
        assert process.returncode is not None
        return Ran(process.returncode, out.decode(), err.decode())

    async def actions(self, action: str, at_least: int = 1) -> list[dict[str, Any]]:
        deadline = time.monotonic() + 5
        while True:
            found = [e for e in await self.broker.audit_events() if e.get("action") == action]
            if len(found) >= at_least or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.05)


DeskFactory = Callable[..., Awaitable[Desk]]


@pytest.fixture
async def make_desk(make_broker: BrokerFactory, tmp_path: Path, policy_dir: Path) -> AsyncIterator[DeskFactory]:
    token_file = tmp_path / "console.token"
    token_file.write_text(TOKEN + "\n")
    signals = (policy_dir / "signals.toml").read_text().replace("admin_roles = []", 'admin_roles = ["auditor"]')
    (policy_dir / "signals.toml").write_text(signals)
    servers: list[TestServer] = []

    async def factory(**options: Any) -> Desk:
        broker = await make_broker(console={"enabled": True, "token_file": str(token_file)}, **options)
        servers.append(TestServer(admin_app(broker.broker), host="127.0.0.1"))
        await servers[-1].start_server()
        return Desk(broker, servers[-1])

    yield factory
    for server in servers:
        await server.close()


@pytest.fixture
async def desk(make_desk: DeskFactory) -> Desk:
    return await make_desk()


async def spend_the_trainees_quota(broker: Harness) -> None:
    for _ in range(3):  # e1003 is a trainee: 60 waybills a shift, 20 a request
        assert (await broker.get(OWN_20, "e1003")).status == 200
    spent = await broker.get(OWN_20, "e1003")
    assert spent.status == 429 and spent.json["reason"] == "quota.exceeded"


async def test_a_raise_lets_the_employee_on_and_ends_by_itself(desk: Desk) -> None:
    await spend_the_trainees_quota(desk.broker)
    ran = await desk.run("quota", "raise", "e1003", "--by", "40", "--for", "2h", "--reason", "ticket 4711: stocktake")
    assert ran.code == 0, ran.err
    assert ran.out.strip() == (
        f"e1003: waybill quota raised by 40 for 2h at {desk.url} (this replica's own counters): limit 60 -> 100, "
        "used 60 (window ends 2026-12-01T18:00:00+08:00); it ends by itself"
    )
    allowed = await desk.broker.get(OWN_20, "e1003")
    assert allowed.status == 200 and '"waybill";q=100;' in allowed.headers["RateLimit-Policy"]
    shown = await desk.run("sessions", "e1003")
    assert (
        "  quota waybill: 80 of 100 used, 20 left, raised by 40 for 7200 s more; resets 2026-12-01T18:00" in shown.out
    )
    [event] = await desk.actions("helpdesk.quota_raise")
    assert event["event"] == "console" and event["operator"] == "console-token" and event["via"] == "token"
    assert event["employee"] == "e1003" and event["reason"] == "ticket 4711: stocktake"
    [change] = event["changes"]
    assert change["limit"] == {"old": 60, "new": 100} and change["raise"] == {"old": 0, "new": 40}
    assert change["raise_seconds"] == 7200 and change["used"] == {"old": 60, "new": 60}
    desk.broker.clock.advance(2 * 3600 + 1)  # 12:00: the same shift, the raise is over
    ended = await desk.broker.get(OWN_20, "e1003")
    assert ended.status == 429 and ended.json["quota"]["limit"] == 60 and ended.json["quota"]["used"] == 80


async def test_a_reset_empties_the_window_and_says_what_it_was(desk: Desk) -> None:
    await spend_the_trainees_quota(desk.broker)
    ran = await desk.run("quota", "reset", "e1003", "--reason", "double-counted scans, ticket 4712")
    assert ran.code == 0, ran.err
    assert f"e1003: waybill quota reset at {desk.url} (this replica's own counters): used 60 -> 0 of 60" in ran.out
    assert (await desk.broker.get(OWN_20, "e1003")).status == 200
    [event] = await desk.actions("helpdesk.quota_reset")
    assert event["employee"] == "e1003" and event["reason"] == "double-counted scans, ticket 4712"
    assert event["changes"][0]["used"] == {"old": 60, "new": 0} and event["client"] == "127.0.0.1"


async def test_sessions_show_what_this_broker_knows_labelled_and_the_look_is_audited(desk: Desk) -> None:
    for path in (OWN_20, "/api/branches/BR002/waybills?limit=1"):
        await desk.broker.get(path, "e1001")
    ran = await desk.run("sessions", "e1001")
    assert ran.code == 0, ran.err
    out = ran.out
    assert out.startswith(f"e1001 (courier; branches BR001; shifts day-cn) as seen by {desk.url}")
    assert "  frozen: no   (counters: this replica's memory)" in out
    assert "  quota waybill: 20 of 500 used, 480 left; resets 2026-12-01T18:00:00+08:00" in out
    assert "browser sign-in sessions: - (browser sign-in is not configured)" in out
    assert "database sessions open on this replica: - (no PostgreSQL door)" in out
    assert "addresses seen by this replica (1):\n    127.0.0.1" in out and "requests 2" in out
    assert "deny  policy.other_branch" in out and "allow allow" in out
    views = json.loads((await desk.run("sessions", "e1001", "--json")).out)
    assert [v["broker"] for v in views] == [desk.url] and views[0]["shared"] is False
    assert [d["verdict"] for d in views[0]["recent_decisions"]] == ["deny", "allow"]
    assert len(await desk.actions("helpdesk.sessions", 2)) == 2


async def test_refusals_say_what_is_wrong_with_their_own_exit_code(desk: Desk) -> None:
    unknown = await desk.run("quota", "reset", "e9999", "--reason", "r")
    assert unknown.code == 5 and "e9999 is not on the live roster" in unknown.err
    wrong = await desk.run("sessions", "e1001", token="not-the-console-token")
    assert wrong.code == 4 and "refused the credential" in wrong.err
    courier = await desk.run("sessions", "e1001", token=desk.broker.token("e1001"))
    assert courier.code == 4 and "e1001 holds no console role" in courier.err
    nobody = await desk.run("sessions", "e1001", brokers=[f"http://127.0.0.1:{free_port()}"])
    assert nobody.code == 3 and "cannot reach the broker's admin listener" in nobody.err
    proxy = await desk.run("sessions", "e1001", brokers=[desk.broker.url("")])
    assert proxy.code == 3 and "serves no help-desk API" in proxy.err  # the proxy port never serves it
    no_quota = await desk.run("quota", "raise", "e1003", "--resource", "customer", "--by", "5", "--for", "1h",
                              "--reason", "r")  # fmt: skip
    assert no_quota.code == 6 and "e1003 has no records quota on 'customer' (quotas: waybill)" in no_quota.err
    for args, said in (
        (("--for", "2x"), "--for: duration '2x' is not a number with s, m, h or d"),
        (("--for", "8d"), "--for 8d: a raise lasts at most 7d"),
        (("--for", "1h", "--by", "0"), "--by 0: give 1 to 1000000 records"),
    ):
        by = () if "--by" in args else ("--by", "5")
        bad = await desk.run("quota", "raise", "e1003", *by, *args, "--reason", "r")
        assert bad.code == 2 and said in bad.err, bad.err
    anonymous = await desk.run("sessions", "e1001", token=None)
    assert anonymous.code == 2 and "who are you?" in anonymous.err
    refused = await desk.actions("login_refused", 2)
    assert {e.get("attempted") for e in refused} == {"helpdesk.sessions"}
    [unknown_event] = await desk.actions("helpdesk.quota_reset_refused")
    assert unknown_event["employee"] == "e9999" and unknown_event["operator"] == "console-token"
    assert (await desk.broker.get(OWN_20, "e1003")).status == 200  # nothing was changed by any of them


async def test_the_api_wants_the_credential_in_the_header_and_a_reason(desk: Desk) -> None:
    path = "/-/helpdesk/employees/e1003/quota/raise"
    async with aiohttp.ClientSession() as session:
        async with session.post(desk.url + path, json={"reason": "r", "by": 5, "seconds": 60}) as reply:
            assert reply.status == 401 and (await reply.json())["error"] == "helpdesk.credentials"
        headers = {"Authorization": f"Bearer {TOKEN}"}
        for body, said in (
            ({"by": 5, "seconds": 60}, "give a reason"),
            ({"reason": "r", "by": "5", "seconds": 60}, "by must be a whole number"),
            ({"reason": "r\nforged line", "by": 5, "seconds": 60}, "give a reason"),
            ({"reason": "r", "by": 5, "seconds": 0}, "a raise lasts from 1 second"),
        ):
            async with session.post(desk.url + path, json=body, headers=headers) as reply:
                answer = await reply.json()
                assert reply.status == 400 and said in answer["detail"], answer
        async with session.post(desk.url + path, data=b"[", headers=headers) as reply:
            assert reply.status == 400 and (await reply.json())["detail"] == "the body must be a JSON object"


class UnanswerableStore(MemoryCounterStore):
    """Counters that cannot be written now (Redis away): the help desk must be told."""

    async def put(self, key: str, value: int, expires_at: float, now: float) -> int:
        raise StoreUnavailable("redis at redis://10.9.9.9: TimeoutError")


async def test_an_unanswering_counter_store_changes_nothing_and_says_so(make_desk: DeskFactory) -> None:
    desk = await make_desk(store=UnanswerableStore())
    ran = await desk.run("quota", "reset", "e1003", "--reason", "r")
    assert ran.code == 6 and "the counter store did not answer, so nothing changed" in ran.err


async def test_with_shared_counters_one_replica_acts_for_all_and_redis_ends_the_raise(
    make_desk: DeskFactory, shared_redis: tuple[str, str]
) -> None:
    url, prefix = shared_redis
    meter = MeterSettings(store="redis", redis_url=url, key_prefix=prefix)
    first, second = await make_desk(meter=meter), await make_desk(meter=meter)
    await spend_the_trainees_quota(first.broker)
    assert (await second.broker.get(OWN_20, "e1003")).status == 429  # one quota for both
    ran = await first.run(
        "quota", "raise", "e1003", "--by", "20", "--for", "2s", "--reason", "r",
        brokers=[f"http://127.0.0.1:{free_port()}", first.url, second.url],
    )  # fmt: skip
    assert ran.code == 0, ran.err
    assert ran.out.count("quota raised") == 1 and "(counters shared by every replica)" in ran.out
    assert (await second.broker.get(OWN_20, "e1003")).status == 200  # raised on the other replica too
    assert not await second.actions("helpdesk.quota_raise")  # acted once, audited where it was done
    deadline = time.monotonic() + 10
    while (await second.broker.get("/api/branches/BR001/waybills?limit=1", "e1003")).status == 200:
        assert time.monotonic() < deadline, "the raise did not end"
        await asyncio.sleep(0.2)
    view = json.loads((await second.run("sessions", "e1003", "--json")).out)[0]
    assert view["quotas"][0]["raised"] == 0 and view["quotas"][0]["limit"] == 60


async def _post(desk: Desk, path: str, token: str, body: object) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(desk.url + path, json=body, headers={"Authorization": f"Bearer {token}"}) as reply,
    ):
        return reply.status, await reply.json(content_type=None)


async def test_an_admin_cannot_change_their_own_quota_and_the_try_is_audited(desk: Desk) -> None:
    own = desk.broker.token("e9001")  # an auditor: a console admin role in this fixture
    for action, body in (
        ("raise", {"reason": "busy week", "by": 1_000_000, "seconds": 604_800, "resource": "waybill"}),
        ("reset", {"reason": "busy week"}),
    ):
        status, answer = await _post(desk, f"/-/helpdesk/employees/e9001/quota/{action}", own, body)
        assert status == 403 and answer["error"] == "helpdesk.own_quota", answer
        refused = await desk.actions(f"helpdesk.quota_{action}_refused")
        assert refused[-1]["operator"] == "e9001" and refused[-1]["employee"] == "e9001"
    assert not await desk.actions("helpdesk.quota_raise", at_least=0)
    # another admin's, or the console token's, action on e9001 is the help desk's job
    status, _ = await _post(desk, "/-/helpdesk/employees/e9001/quota/reset", TOKEN, {"reason": "ticket 42"})
    assert status == 200


class ReadsFailStore(MemoryCounterStore):
    """Counters that can be written but not read (a Redis timing out on the read)."""

    async def get(self, key: str, now: float) -> int:
        raise StoreUnavailable("redis: TimeoutError (reading)")


async def test_a_raise_that_cannot_be_completed_is_never_left_in_place(make_desk: DeskFactory) -> None:
    desk = await make_desk(store=ReadsFailStore())
    status, answer = await _post(
        desk, "/-/helpdesk/employees/e1003/quota/raise", TOKEN, {"reason": "r", "by": 500, "seconds": 3600}
    )
    assert status == 503 and answer["error"] == "helpdesk.store_unavailable", answer
    store = desk.broker.broker.meter.store
    assert isinstance(store, ReadsFailStore)
    raised = await MemoryCounterStore.get(store, "qr:{e1003}:waybill", desk.broker.clock.now())
    assert raised == 0  # "nothing changed" is true


async def test_a_body_over_the_limit_is_refused_and_audited(desk: Desk) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"reason": "' + b"x" * (2 * 1024 * 1024) + b'", "by": 5, "seconds": 60}'

    async with (
        aiohttp.ClientSession() as session,
        session.post(
            desk.url + "/-/helpdesk/employees/e1003/quota/raise",
            data=chunks(),
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as reply,
    ):
        assert reply.status == 400 and "the body is over" in (await reply.json())["detail"]
    refused = await desk.actions("helpdesk.quota_raise_refused")
    assert refused[-1]["employee"] == "e1003" and "the body is over" in refused[-1]["detail"]
