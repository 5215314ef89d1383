"""The browser session stores, memory and Redis, held to one contract: what is found,
when it ends (on the broker's clock), sign-out, revocation, and a state good once."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from broker.identity.session import BrowserSession, PendingLogin, SessionStore, digest
from broker.identity.session_memory import MemorySessionStore
from broker.identity.session_redis import RedisSessionStore

NOW = 1_800_000_000.0


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, shared_redis: tuple[str, str]) -> AsyncIterator[SessionStore]:
    url, prefix = shared_redis
    made: SessionStore = MemorySessionStore() if request.param == "memory" else RedisSessionStore(url, prefix=prefix)
    yield made
    await made.close()


def session(name: str, employee: str = "e1001", ends: float = NOW + 600) -> BrowserSession:
    return BrowserSession(digest(name), employee, NOW, ends)


async def test_a_session_is_found_until_its_end(store: SessionStore) -> None:
    await store.open(session("a"), NOW)
    assert await store.find(digest("a"), NOW + 599) == session("a")
    assert await store.find(digest("a"), NOW + 600) is None  # judged on the broker's clock
    assert await store.find(digest("unknown"), NOW) is None


async def test_sign_out_ends_one_and_revocation_ends_all(store: SessionStore) -> None:
    for name, employee in (("a", "e1001"), ("b", "e1001"), ("c", "e1002")):
        await store.open(session(name, employee), NOW)
    assert await store.end(digest("a")) == session("a")
    assert await store.end(digest("a")) is None
    assert await store.end_all("e1001") == 1
    assert await store.find(digest("b"), NOW) is None
    assert await store.find(digest("c"), NOW) == session("c", "e1002")


async def test_a_pending_sign_in_is_taken_once(store: SessionStore) -> None:
    login = PendingLogin(digest("state"), digest("browser"), "nonce", "verifier", "/next", NOW + 600)
    await store.hold_login(login, NOW)
    assert await store.take_login(digest("state"), NOW) == login
    assert await store.take_login(digest("state"), NOW) is None
    await store.hold_login(login, NOW)
    assert await store.take_login(digest("state"), NOW + 601) is None  # too late


async def test_the_help_desk_sees_an_employees_live_sessions_and_no_one_elses(store: SessionStore) -> None:
    await store.open(BrowserSession(digest("late"), "e1001", NOW + 5, NOW + 600), NOW)
    await store.open(session("early"), NOW)
    await store.open(session("ending", ends=NOW + 10), NOW)
    await store.open(session("theirs", "e1002"), NOW)
    assert [s.key for s in await store.of_employee("e1001", NOW + 20)] == [digest("early"), digest("late")]
    await store.end(digest("early"))
    assert [s.key for s in await store.of_employee("e1001", NOW + 20)] == [digest("late")]
    assert await store.of_employee("e9999", NOW) == []
