"""Counters in Redis, shared by every replica of the broker.

Each operation is one Lua script, so a check and its charge are one atomic round trip:
two replicas cannot both squeeze the last records of a quota. Every call is bounded by a
short timeout and no retries, so a sick Redis costs a request milliseconds, never a
hang; the Meter above decides what a failure means.

Keys expire with their window, and the expiry is sent as a *relative* TTL (`PEXPIRE`:
the window's end minus the broker's own now, plus slack), never as an absolute instant.
A quota window is a calendar fact the broker computes (a shift ends at 06:00 branch
time), so the broker's clock must decide which window a request falls in; but how long
Redis keeps the key is a duration, and a duration means the same on both machines
whatever their clocks say. With `PEXPIREAT` a broker whose clock ran behind Redis's (or
a demo clock pinned to a past day) wrote keys Redis deleted at once: every employee had
an endless quota. Using Redis's `TIME` for everything instead would move the window
arithmetic into Lua and make the in-memory and Redis stores disagree on which window a
request is in. A TTL that comes out not positive means the caller asked to charge a
window that has already ended: that is a bug, refused here (`ExpiredWindow`) rather
than written as a key that vanishes.

The rate limiter's theoretical arrival time is stored as the broker's epoch seconds, so
replicas sharing one Redis assume their clocks agree to well within a rate period (NTP);
its key's lifetime is relative too.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from broker.meter.store import (
    Admission,
    ExpiredWindow,
    Gate,
    Persistence,
    QuotaAsk,
    RateAsk,
    RateOutcome,
    Reservation,
    StoreUnavailable,
)

EXPIRY_SLACK_MS = 60_000
"""Keys outlive their window a little so a clock skew between replicas cannot drop one early."""

_ADD = """
local used = redis.call('INCRBY', KEYS[1], ARGV[1])
if used < 0 then
  redis.call('SET', KEYS[1], 0)
  used = 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return used
"""

# A request's probe-budget check, rate check (GCRA: the key holds the theoretical
# arrival time) and quota reservation in one round trip. Floats travel as strings with microsecond precision:
# Redis truncates Lua numbers to integers in replies, and Lua's tostring() keeps only 14
# digits of an epoch timestamp. KEYS[1] is the rate
# key, KEYS[2] the quota key, KEYS[3] the quota's raise key (records the help desk added
# for now; the quota key again when there is none), KEYS[4..] the gates' keys (all carry the employee as a
# hash tag, so they live on one shard of a cluster). ARGV: now, rate?, period, rate
# limit, quota?, amount, quota limit, quota time to live (ms, relative), number of
# gates, then each gate's limit. Reply: allowed, retry, reset, remaining, granted, used,
# closed gate (1-based), its counter, the raise (granted -1: no reservation was
# attempted; closed gate 0: every gate open).
_ADMIT = """
local now = tonumber(ARGV[1])
local allowed, retry, reset, remaining = '1', '0', '0', '-1'
for i = 1, tonumber(ARGV[9]) do
  local used = tonumber(redis.call('GET', KEYS[3 + i]) or '0')
  if used >= tonumber(ARGV[9 + i]) then
    return {'1', '0', '0', '-1', '-1', '0', string.format('%d', i), string.format('%d', used), '0'}
  end
end
if ARGV[2] == '1' then
  local period = tonumber(ARGV[3])
  local interval = period / tonumber(ARGV[4])
  local tat = tonumber(redis.call('GET', KEYS[1]) or ARGV[1])
  if tat < now then tat = now end
  local new_tat = tat + interval
  if new_tat - now > period + 1e-6 then
    local wait = string.format('%.6f', tat + interval - period - now)
    return {'0', wait, string.format('%.6f', tat - now), '0', '-1', '0', '0', '0', '0'}
  end
  redis.call('SET', KEYS[1], string.format('%.6f', new_tat), 'PX', math.ceil((new_tat - now) * 1000) + 1000)
  reset = string.format('%.6f', new_tat - now)
  remaining = string.format('%d', math.floor((period - (new_tat - now)) / interval + 1e-6))
end
if ARGV[5] ~= '1' then
  return {allowed, retry, reset, remaining, '-1', '0', '0', '0', '0'}
end
local used = tonumber(redis.call('GET', KEYS[2]) or '0')
local raised = 0
if KEYS[3] ~= KEYS[2] then
  raised = tonumber(redis.call('GET', KEYS[3]) or '0')
end
local amount = tonumber(ARGV[6])
if used + amount > tonumber(ARGV[7]) + raised then
  return {allowed, retry, reset, remaining, '0', string.format('%d', used), '0', '0', string.format('%d', raised)}
end
used = redis.call('INCRBY', KEYS[2], amount)
redis.call('PEXPIRE', KEYS[2], ARGV[8])
return {allowed, retry, reset, remaining, '1', string.format('%d', used), '0', '0', string.format('%d', raised)}
"""


def bounded_client(url: str, *, timeout: float, connections: int) -> aioredis.Redis:
    """A Redis client whose every wait is bounded by `timeout` and that never retries on
    its own (the caller decides what a failure means). A blocking pool: a burst of
    requests queues for a connection, within the timeout, instead of failing with "too
    many connections". Shared by the counters and the browser sessions."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=connections,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )
    return aioredis.Redis(connection_pool=pool)


class RedisCounterStore:
    def __init__(self, url: str, *, prefix: str = "broker:", timeout: float = 0.5, connections: int = 64) -> None:
        self.url = url
        self._prefix = prefix
        self._timeout = timeout
        self._client = bounded_client(url, timeout=timeout, connections=connections)
        self._add = self._client.register_script(_ADD)
        self._admit = self._client.register_script(_ADMIT)

    async def admit(
        self, rate: RateAsk | None, quota: QuotaAsk | None, now: float, gates: tuple[Gate, ...] = ()
    ) -> Admission:
        first = rate.key if rate else quota.key if quota else gates[0].key if gates else "none"
        keys = [self._prefix + first]
        keys.append(self._prefix + quota.key if quota else keys[0])
        keys.append(self._prefix + quota.raise_key if quota and quota.raise_key else keys[1])  # itself: no raise
        keys += [self._prefix + gate.key for gate in gates]
        args = [
            repr(now),
            "1" if rate else "0",
            repr(float(rate.period)) if rate else "0",
            rate.limit if rate else 0,
            "1" if quota else "0",
            quota.amount if quota else 0,
            quota.limit if quota else 0,
            _ttl_ms(quota.expires_at, now) if quota else 0,
            len(gates),
            *(gate.limit for gate in gates),
        ]
        reply = await self._run(self._admit(keys=keys, args=args))
        allowed, retry, reset, remaining, granted, used, closed, closed_used, raised = reply
        if closed != b"0":
            return Admission(None, None, int(closed) - 1, int(closed_used))
        outcome = None
        if rate is not None:
            ok = allowed == b"1"
            outcome = RateOutcome(ok, int(remaining), float(reset), 0.0 if ok else max(float(retry), 0.001))
        booked = None if granted == b"-1" else Reservation(granted == b"1", int(used), int(raised))
        return Admission(outcome, booked)

    async def reserve(
        self, key: str, amount: int, limit: int, expires_at: float, now: float, raise_key: str = ""
    ) -> Reservation:
        booked = (await self.admit(None, QuotaAsk(key, amount, limit, expires_at, raise_key), now)).quota
        assert booked is not None
        return booked

    async def add(self, key: str, delta: int, expires_at: float, now: float) -> int:
        return int(await self._call(self._add, key, delta, _ttl_ms(expires_at, now)))

    async def get(self, key: str, now: float) -> int:
        value = await self._run(self._client.get(self._prefix + key))
        return int(value or 0)

    async def put(self, key: str, value: int, expires_at: float, now: float) -> int:
        """SET with the exact lifetime asked (no slack: a raise ends when it says), or DEL."""
        name = self._prefix + key
        if not value:
            return int(await self._run(self._client.getdel(name)) or 0)
        lifetime = math.ceil((expires_at - now) * 1000)
        if lifetime <= 0:
            raise ExpiredWindow(f"{key} would end {-lifetime} ms before now; refusing to write an expired key")
        return int(await self._run(self._client.set(name, value, px=lifetime, get=True)) or 0)

    async def expires_in(self, key: str, now: float) -> float | None:
        milliseconds = int(await self._run(self._client.pttl(self._prefix + key)))
        return milliseconds / 1000 if milliseconds >= 0 else None  # -2: no key, -1: no expiry

    async def hit_rate(self, key: str, limit: int, period: float, now: float) -> RateOutcome:
        outcome = (await self.admit(RateAsk(key, limit, period), None, now)).rate
        assert outcome is not None
        return outcome

    async def ping(self) -> None:
        await self._run(self._client.ping())

    async def frozen(self) -> list[str]:
        """The freeze keys set now (without the prefix): read every second by each
        replica so a freeze holds there while Redis is away and it fails open."""

        async def scan() -> list[str]:
            found = []
            async for key in self._client.scan_iter(match=self._prefix + "f:*", count=1000):
                found.append(key.decode()[len(self._prefix) :])
            if not found:
                return []
            values = await self._client.mget([self._prefix + key for key in found])
            return [key for key, value in zip(found, values, strict=True) if value and int(value) >= 1]

        return list(await self._run(scan()))

    async def persistence(self) -> Persistence:
        """Read Redis's own persistence settings. Append-only file on: durable. RDB
        snapshots alone lose every count since the last snapshot (up to a shift's worth),
        so they are reported as not durable too."""
        try:
            appendonly = await self._run(self._client.config_get("appendonly"))
            save = await self._run(self._client.config_get("save"))
        except StoreUnavailable as exc:
            detail = f"could not read Redis's persistence settings ({exc}); make sure it keeps its data"
            return Persistence(None, detail)
        aof = _text(appendonly.get("appendonly")).lower() == "yes"
        snapshots = _text(save.get("save")).strip()
        if aof:
            return Persistence(True, "Redis writes an append-only file (appendonly yes)")
        if snapshots:
            return Persistence(
                False,
                f"Redis keeps only RDB snapshots (save {snapshots!r}): a restart forgets every count since the last "
                "one and hands employees fresh quotas; set appendonly yes",
            )
        return Persistence(
            False, "Redis keeps nothing on disk (appendonly no, save ''): a restart hands every employee a fresh quota"
        )

    async def close(self) -> None:
        await self._client.aclose(close_connection_pool=True)

    async def _call(self, script: AsyncScript, key: str, *args: str | int | float) -> Any:
        return await self._run(script(keys=[self._prefix + key], args=list(args)))

    async def _run(self, call: Awaitable[Any]) -> Any:
        try:
            # the whole call, waiting for a pooled connection included: what the README
            # promises (the socket and pool timeouts alone could add up to twice this)
            async with asyncio.timeout(self._timeout):
                return await call
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"redis at {self.url}: {type(exc).__name__}: {exc}") from exc


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


def _ttl_ms(expires_at: float, now: float) -> int:
    """How long Redis keeps a key of a window ending at `expires_at`, from `now` on the
    broker's clock: a duration, so Redis's clock never has to agree with ours."""
    remaining_ms = math.ceil((expires_at - now) * 1000)
    if remaining_ms <= 0:
        raise ExpiredWindow(f"quota window ended {-remaining_ms} ms before now; refusing to write an expired key")
    return remaining_ms + EXPIRY_SLACK_MS
