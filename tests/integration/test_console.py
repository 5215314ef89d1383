"""The security console (issue #14) over real sockets, without a browser: who gets in,
what every action writes to the audit, freeze and unfreeze reaching the proxy, the
help desk's decision look-up, and the console never answering on the proxy port.
(tests/integration/test_console_browser.py drives the same pages in Chromium.)"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from broker.app import admin_app
from broker.config import ConsoleSettings, ServerSettings
from tests.conftest import BrokerFactory
from tests.harness import Harness

CONSOLE_TOKEN = "console-test-token-0123456789"
OWN_LIST = "/api/branches/BR001/waybills?limit=1"


@dataclass
class Console:
    broker: Harness
    server: TestServer
    session: aiohttp.ClientSession

    def url(self, path: str) -> str:
        return str(self.server.make_url(f"/-/console{path}"))

    async def sign_in(self, credential: str = CONSOLE_TOKEN) -> tuple[int, str]:
        async with self.session.post(self.url("/login"), data={"credential": credential}) as reply:
            return reply.status, await reply.text()

    async def page(self, path: str) -> tuple[int, str]:
        async with self.session.get(self.url(path), allow_redirects=False) as reply:
            return reply.status, await reply.text()

    async def csrf(self) -> str:
        _, page = await self.page("/")
        found = re.search(r'name="csrf" value="([^"]+)"', page)
        assert found, page
        return found[1]

    async def act(self, employee: str, action: str, csrf: str | None = None) -> int:
        data = {"csrf": await self.csrf() if csrf is None else csrf, "back": "/-/console/"}
        async with self.session.post(self.url(f"/employee/{employee}/{action}"), data=data, allow_redirects=False) as r:
            return r.status


@pytest.fixture
async def console(make_broker: BrokerFactory, tmp_path: Path, policy_dir: Path) -> AsyncIterator[Console]:
    token_file = tmp_path / "console.token"
    token_file.write_text(CONSOLE_TOKEN + "\n")
    signals = (policy_dir / "signals.toml").read_text().replace("admin_roles = []", 'admin_roles = ["auditor"]')
    (policy_dir / "signals.toml").write_text(signals)
    broker = await make_broker(console={"enabled": True, "token_file": str(token_file)})
    server = TestServer(admin_app(broker.broker), host="127.0.0.1")
    await server.start_server()
    session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    yield Console(broker, server, session)
    await session.close()
    await server.close()


def other_session(console: Console) -> Console:
    """A second browser on the same console (its own cookie jar)."""
    return Console(console.broker, console.server, aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)))


async def console_events(broker: Harness, action: str, at_least: int = 1) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 5
    while True:
        found = [e for e in await broker.audit_events() if e.get("event") == "console" and e["action"] == action]
        if len(found) >= at_least or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.05)


async def test_nobody_gets_in_without_a_credential_and_failures_are_audited(console: Console) -> None:
    status, _ = await console.page("/")
    assert status == 303  # to the login page
    async with console.session.get(console.url("/events")) as reply:
        assert reply.status == 401
    status, page = await console.sign_in("not-the-token")
    assert status == 401 and "neither the console token" in page
    # a courier's own valid token: on the roster, but no console role
    status, page = await console.sign_in(console.broker.token("e1001"))
    assert status == 401 and "holds no console role" in page
    [first, second] = await console_events(console.broker, "login_refused", 2)
    assert first["operator"] is None and first["client"] == "127.0.0.1"
    assert "holds no console role" in second["detail"]
    for _ in range(3):
        await console.sign_in("still-wrong")
    status, page = await console.sign_in(CONSOLE_TOKEN)  # even the right one, while throttled
    assert status == 401 and "Too many failed logins" in page


async def test_the_token_and_an_admin_jwt_sign_in_and_the_login_is_audited(console: Console) -> None:
    status, page = await console.sign_in()
    assert status == 200 and "Open flags" in page and "Sign out console-token" in page
    [login] = await console_events(console.broker, "login")
    assert login["operator"] == "console-token" and login["via"] == "token"
    other = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    async with other.post(console.url("/login"), data={"credential": console.broker.token("e9001")}) as reply:
        assert reply.status == 200 and "Sign out e9001" in await reply.text()
    await other.close()
    assert [e["operator"] for e in await console_events(console.broker, "login", 2)] == ["console-token", "e9001"]


async def test_freeze_and_unfreeze_from_the_console_reach_the_proxy(console: Console) -> None:
    await console.sign_in()
    assert (await console.broker.get(OWN_LIST, "e1001")).status == 200
    assert await console.act("e1001", "freeze", csrf="forged") == 403  # not sent by the console
    assert (await console.broker.get(OWN_LIST, "e1001")).status == 200
    assert await console.act("e1001", "freeze") == 303
    refused = await console.broker.get(OWN_LIST, "e1001")
    assert refused.status == 403 and refused.json["reason"] == "identity.suspended"
    status, page = await console.page("/employee/e1001")
    assert status == 200 and "Unfreeze e1001" in page and "identity.suspended" in page and "127.0.0.1" in page
    assert await console.act("e1001", "unfreeze") == 303
    assert (await console.broker.get(OWN_LIST, "e1001")).status == 200
    [freeze] = await console_events(console.broker, "freeze")
    assert freeze["employee"] == "e1001" and freeze["operator"] == "console-token"
    assert (await console_events(console.broker, "unfreeze"))[0]["employee"] == "e1001"


async def test_a_flag_shows_with_its_evidence_until_a_person_closes_it(console: Console) -> None:
    await console.sign_in()
    for address in ("127.0.0.1", "127.0.0.2", "127.0.0.3"):
        connector = aiohttp.TCPConnector(local_addr=(address, 0))
        async with aiohttp.ClientSession(connector=connector) as session:
            token = console.broker.token("e1001")
            async with session.get(console.broker.url(OWN_LIST), headers={"Authorization": f"Bearer {token}"}):
                pass
    deadline = time.monotonic() + 5
    while "shared_login" not in (flags := (await console.page("/fragment/flags"))[1]):
        assert time.monotonic() < deadline, flags
        await asyncio.sleep(0.1)
    assert "127.0.0.3" in flags and "Unfreeze e1001" in flags  # the signal froze them
    assert await console.act("e1001", "unfreeze") == 303
    assert "No open flags" in (await console.page("/fragment/flags"))[1]
    assert (await console.broker.get(OWN_LIST, "e1001")).status == 200


async def test_the_help_desk_looks_a_refusal_up_by_its_decision_id(console: Console) -> None:
    await console.sign_in()
    refused = await console.broker.get("/api/branches/BR002/waybills?limit=5", "e1001")
    decision = refused.json["decision_id"]
    status, page = await console.page(f"/lookup?id={decision}")
    assert status == 200 and "policy.other_branch" in page and "DENY" in page and "verdict: deny" in page
    status, page = await console.page("/lookup?id=nosuchdecision0")
    assert "neither in memory nor in the audit file" in page
    status, page = await console.page("/lookup?id=%3Cscript%3E")
    assert "<script>" not in page


async def test_the_live_stream_carries_decisions(console: Console) -> None:
    await console.sign_in()
    async with console.session.get(console.url("/events")) as stream:
        assert stream.headers["Content-Type"] == "text/event-stream"
        await stream.content.readline()
        await console.broker.get(OWN_LIST, "e1003")
        seen = b""
        while b"e1003" not in seen:
            seen += await asyncio.wait_for(stream.content.readline(), 5)
    assert b"event: decision" in seen


async def test_the_console_is_not_served_on_the_proxy_port(console: Console) -> None:
    reply = await console.broker.get("/-/console/login")
    assert reply.status == 401 and reply.json["reason"] == "identity.missing"  # the proxy, asking who this is


def test_the_console_needs_the_admin_listener() -> None:
    settings = ConsoleSettings(enabled=True)
    assert any("admin_port" in p for p in settings.problems(ServerSettings().admin_port))
    assert settings.problems(9090) == []


async def test_a_frozen_admin_can_neither_sign_in_nor_unfreeze_themselves(console: Console) -> None:
    """A renter holding an admin's login: once that login is frozen (by a signal or a
    person), its token must not open the console, and a console session it opened
    before must not act, least of all to unfreeze itself."""
    admin = other_session(console)
    try:
        status, _ = await admin.sign_in(console.broker.token("e9001"))
        assert status == 200
        csrf = await admin.csrf()
        await console.sign_in()
        assert await console.act("e9001", "freeze") == 303
        assert (await console.broker.get(OWN_LIST, "e9001")).status == 403
        assert await admin.act("e9001", "unfreeze", csrf=csrf) in (401, 403)  # before: 303, and e9001 was free again
        status, page = await admin.page("/")
        assert status in (303, 401, 403) and "Open flags" not in page
        later = other_session(console)
        status, page = await later.sign_in(console.broker.token("e9001"))
        await later.session.close()
        assert status == 401 and "frozen" in page
        refused = await console.broker.get(OWN_LIST, "e9001")
        assert refused.status == 403 and refused.json["reason"] == "identity.suspended"
        assert [e["operator"] for e in await console_events(console.broker, "unfreeze", 0)] == []
    finally:
        await admin.session.close()


async def test_an_admin_whose_console_role_is_withdrawn_is_signed_out(console: Console, policy_dir: Path) -> None:
    admin = other_session(console)
    try:
        assert (await admin.sign_in(console.broker.token("e9001")))[0] == 200
        csrf = await admin.csrf()
        signals = policy_dir / "signals.toml"
        signals.write_text(signals.read_text().replace('admin_roles = ["auditor"]', "admin_roles = []"))
        assert await console.broker.broker.reload("test")
        assert await admin.act("e1001", "freeze", csrf=csrf) in (401, 403)  # before: 303, e1001 frozen
        assert (await console.broker.get(OWN_LIST, "e1001")).status == 200
    finally:
        await admin.session.close()


async def test_the_live_stream_ends_with_the_session(console: Console) -> None:
    """Signing out (or a session ended by its expiry or a freeze) also stops the live
    decisions an open stream was carrying."""
    await console.sign_in()
    csrf = await console.csrf()
    async with console.session.get(console.url("/events")) as stream:
        await stream.content.readline()
        async with console.session.post(console.url("/logout"), data={"csrf": csrf}, allow_redirects=False) as out:
            assert out.status == 303
        await asyncio.sleep(0.2)
        await console.broker.get(OWN_LIST, "e1003")
        seen = b""
        deadline = time.monotonic() + 8
        while not stream.content.at_eof() and time.monotonic() < deadline:
            try:
                seen += await asyncio.wait_for(stream.content.readline(), 1)
            except TimeoutError:
                continue
        assert stream.content.at_eof() and b"e1003" not in seen  # before: the stream went on, e1003 in it
