"""Sessions in Redis, shared by every replica: a sign-in on one is good on all, and a
sign-out or a revocation on one ends it on all from their next request.

Each record is JSON under its key, with a relative time to live (the session's end on
the broker's clock minus the broker's now, plus slack): Redis only forgets the key, the
broker judges the end itself on every read, so the two clocks never have to agree.
An employee's session keys are also kept in a set, so `broker revoke` can end them all.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable
from typing import Any, TypeVar

import orjson
from redis.exceptions import RedisError

from broker.identity.session import BrowserSession, PendingLogin, SessionStoreUnavailable
from broker.meter.redis_store import bounded_client

T = TypeVar("T")
SLACK_MS = 60_000

# KEYS[1] the session, KEYS[2] the employee's set; ARGV: record, ttl (ms), session key.
_OPEN = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return 1
"""

MAX_PENDING = 100_000
"""Sign-ins begun per login timeout, every replica together; past it a new one is
refused (503). /-/oidc/login answers anyone before they are identified, and each one
leaves a record in the Redis the counters and freezes live in: unbounded, a loop of
them could fill it (every counter write then fails, or counters and freezes are
evicted). The memory store drops its oldest instead."""

# KEYS[1] the pending sign-in, KEYS[2] the count of those begun in this window;
# ARGV: record, ttl (ms), the most allowed.
_HOLD = """
local begun = redis.call('INCR', KEYS[2])
if begun == 1 then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
if begun > tonumber(ARGV[3]) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS[1] the employee's set; ARGV[1] the prefix of session keys.
_END_ALL = """
local ended = 0
for _, key in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  ended = ended + redis.call('DEL', ARGV[1] .. key)
end
redis.call('DEL', KEYS[1])
return ended
"""


class RedisSessionStore:
    def __init__(self, url: str, *, prefix: str = "broker:session:", timeout: float = 0.5) -> None:
        self._prefix = prefix
        self._timeout = timeout
        self._client = bounded_client(url, timeout=timeout, connections=16)
        self._open = self._client.register_script(_OPEN)
        self._end_all = self._client.register_script(_END_ALL)
        self._hold = self._client.register_script(_HOLD)

    async def open(self, session: BrowserSession, now: float) -> None:
        record = orjson.dumps(
            {"employee": session.employee, "started": session.started, "expires_at": session.expires_at}
        )
        keys = [self._session_key(session.key), self._employee_key(session.employee)]
        await self._run(self._open(keys=keys, args=[record, _ttl_ms(session.expires_at, now), session.key]))

    async def find(self, key: str, now: float) -> BrowserSession | None:
        raw = await self._run(self._client.get(self._session_key(key)))
        session = _session(key, raw)
        return session if session is not None and session.expires_at > now else None

    async def end(self, key: str) -> BrowserSession | None:
        session = _session(key, await self._run(self._client.getdel(self._session_key(key))))
        if session is not None:
            await self._run(self._client.srem(self._employee_key(session.employee), key))
        return session

    async def end_all(self, employee: str) -> int:
        ended = await self._run(self._end_all(keys=[self._employee_key(employee)], args=[self._prefix + "s:"]))
        return int(ended)

    async def of_employee(self, employee: str, now: float) -> list[BrowserSession]:
        keys = sorted(await self._run(self._client.smembers(self._employee_key(employee))))
        if not keys:
            return []
        names = [key.decode() if isinstance(key, bytes) else str(key) for key in keys]
        records = await self._run(self._client.mget([self._session_key(name) for name in names]))
        found = [_session(name, raw) for name, raw in zip(names, records, strict=True)]
        live = [session for session in found if session is not None and session.expires_at > now]
        return sorted(live, key=lambda session: session.started)

    async def hold_login(self, login: PendingLogin, now: float) -> None:
        record = orjson.dumps(
            {
                "browser": login.browser,
                "nonce": login.nonce,
                "verifier": login.verifier,
                "next_path": login.next_path,
                "expires_at": login.expires_at,
            }
        )
        keys = [self._prefix + "l:" + login.key, self._prefix + "l:started"]
        held = await self._run(self._hold(keys=keys, args=[record, _ttl_ms(login.expires_at, now), MAX_PENDING]))
        if not held:
            raise SessionStoreUnavailable(f"more than {MAX_PENDING} sign-ins begun within the login timeout")

    async def take_login(self, key: str, now: float) -> PendingLogin | None:
        raw = await self._run(self._client.getdel(self._prefix + "l:" + key))
        if raw is None:
            return None
        fields = orjson.loads(raw)
        login = PendingLogin(key, fields["browser"], fields["nonce"], fields["verifier"], fields["next_path"],
                             float(fields["expires_at"]))  # fmt: skip
        return login if login.expires_at > now else None

    async def close(self) -> None:
        await self._client.aclose(close_connection_pool=True)

    def _session_key(self, key: str) -> str:
        return self._prefix + "s:" + key

    def _employee_key(self, employee: str) -> str:
        return self._prefix + "e:" + employee

    async def _run(self, call: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self._timeout):  # the pool wait included
                return await call
        except (RedisError, OSError, TimeoutError) as exc:
            raise SessionStoreUnavailable(f"the session store did not answer: {type(exc).__name__}") from exc


def _session(key: str, raw: Any) -> BrowserSession | None:
    if raw is None:
        return None
    fields = orjson.loads(raw)
    return BrowserSession(key, str(fields["employee"]), float(fields["started"]), float(fields["expires_at"]))


def _ttl_ms(expires_at: float, now: float) -> int:
    """How long Redis keeps the key: a duration, the same on both machines."""
    return max(1, math.ceil((expires_at - now) * 1000)) + SLACK_MS
