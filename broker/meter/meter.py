"""Quota and rate metering over a CounterStore, and what to do when the store fails.

With the in-memory store nothing can fail. With a shared store (Redis) each resource
is configured to fail closed (refuse: the safe default) or fail open onto a local
in-memory store with scaled-down limits, so one replica cannot hand out more than a
fraction of a quota while Redis is away. Which store served is reported per decision.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

import structlog

from broker.meter.breaker import BreakerState, CircuitBreaker
from broker.meter.store import (
    Admission,
    CounterStore,
    ExpiredWindow,
    Gate,
    MemoryCounterStore,
    Persistence,
    QuotaAsk,
    RateAsk,
    StoreUnavailable,
)

log = structlog.get_logger("broker.meter")
FREEZE_MIRROR_SECONDS = 1.0
FREEZE_MIRROR_KEEP = 366 * 86400
"""A mirrored freeze lasts until the shared store says it was lifted."""
T = TypeVar("T")


class FailureMode(StrEnum):
    CLOSED = "closed"
    OPEN = "open"


class Served(StrEnum):
    """Which counters a decision was metered with, for the audit event and metrics."""

    SHARED = "shared"
    LOCAL = "local"
    FALLBACK = "fallback"
    REFUSED = "refused"


class MeterUnavailable(Exception):
    def __init__(self, detail: str, retry_after: float) -> None:
        super().__init__(detail)
        self.detail, self.retry_after = detail, retry_after


@dataclass(frozen=True, slots=True)
class FailurePolicy:
    default: FailureMode = FailureMode.CLOSED
    fail_open: frozenset[str] = frozenset()
    fail_closed: frozenset[str] = frozenset()
    fallback_scale: float = 0.25

    def mode_for(self, resource: str) -> FailureMode:
        if resource in self.fail_open:
            return FailureMode.OPEN
        if resource in self.fail_closed:
            return FailureMode.CLOSED
        return self.default


class Meter:
    def __init__(
        self,
        store: CounterStore,
        clock: Callable[[], float],
        *,
        shared: bool = False,
        failure: FailurePolicy | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.store = store
        self.shared = shared
        self._failure = failure or FailurePolicy()
        self._breaker = breaker or CircuitBreaker(clock)
        self._fallback = MemoryCounterStore()
        self._local = store if isinstance(store, MemoryCounterStore) and store.direct and not shared else None
        """The store when `admit_now` can answer from it: this process's memory, which
        cannot fail or make anyone wait (no breaker, no coroutine)."""
        self.persistence: Persistence | None = None
        """The shared store's persistence as read at start (None before, or in memory)."""

    @property
    def fallback(self) -> CounterStore:
        """The in-memory store used while the shared one is away (failing open)."""
        return self._fallback

    @property
    def state(self) -> BreakerState:
        return self._breaker.state

    def admit_now(
        self, rate: RateAsk | None, quota: QuotaAsk | None, now: float, gates: tuple[Gate, ...] = ()
    ) -> tuple[Admission, Served] | None:
        """`admit` answered at once when the counters are in this process's memory: two
        coroutines fewer for every decision (a statement each in the PostgreSQL door).
        None: await `admit` (a shared store, or a window already ended, which it refuses)."""
        local = self._local
        if local is None or (quota is not None and quota.expires_at <= now):
            return None
        return local.admit_now(rate, quota, now, gates), Served.LOCAL

    async def admit(
        self,
        resource: str,
        rate: RateAsk | None,
        quota: QuotaAsk | None,
        now: float,
        gates: tuple[Gate, ...] = (),
    ) -> tuple[Admission, Served]:
        """The gates, rate check and quota reservation of one request, from the store
        that is up. Gates are not scaled while failing open: a freeze is a freeze."""
        if quota is not None and quota.expires_at <= now:
            log.error("meter.window_already_ended", key=quota.key, window_end=quota.expires_at, now=now)
            raise ExpiredWindow(f"quota window of {quota.key} ended {now - quota.expires_at:.3f} s ago")
        if not self.shared:  # the in-memory store cannot fail: no breaker, no closures
            return await self.store.admit(rate, quota, now, gates), Served.LOCAL

        def scaled(store: CounterStore) -> Awaitable[Admission]:
            local_rate = rate.with_limit(self._scaled(rate.limit)) if rate else None
            local_quota = quota.with_limit(self._scaled(quota.limit)) if quota else None
            return store.admit(local_rate, local_quota, now, gates)

        return await self._metered(resource, lambda store: store.admit(rate, quota, now, gates), scaled)

    async def settle(self, served: Served, key: str, delta: int, expires_at: float, now: float) -> int | None:
        """Correct a reservation where it was made. If the shared store has gone away
        meanwhile, the reservation stays charged: the error is on the safe side.

        An answer that finishes after its quota window ended settles nothing: the next
        window has a key of its own, and the old one must not be written again."""
        if expires_at <= now:
            log.info("meter.settle_after_window", key=key, delta=delta)
            return None
        store = self._fallback if served is Served.FALLBACK else self.store
        try:
            return await store.add(key, delta, expires_at, now)
        except StoreUnavailable as exc:
            log.warning("meter.settle_failed", key=key, delta=delta, error=str(exc))
            return None

    async def used(self, key: str, now: float) -> int:
        try:
            return await self.store.get(key, now)
        except StoreUnavailable:
            return await self._fallback.get(key, now)

    async def start(self) -> None:
        """Open the shared store's first connection before traffic arrives; a store that
        is down at start is reported (readiness, log) and handled like any outage."""
        if not self.shared:
            return
        try:
            await self.store.ping()
        except StoreUnavailable as exc:
            self._breaker.failed()
            log.error("meter.store_unreachable_at_start", error=str(exc))
        self.persistence = await self.store.persistence()
        if self.persistence.durable is not True:
            log.warning("meter.store_not_persistent", detail=self.persistence.detail)

    async def mirror_freezes(self, now: Callable[[], float], every: float = FREEZE_MIRROR_SECONDS) -> None:
        """Copy the shared store's freezes into the local fallback, every `every` seconds,
        for as long as the broker runs: while the shared store is away and a resource
        fails open, a freeze set by another replica or `broker freeze` still holds here."""
        mirrored: set[str] = set()
        while True:
            await asyncio.sleep(every)
            if self._breaker.state is not BreakerState.CLOSED:
                continue  # keep the last copy while the shared store is away
            try:
                frozen = set(await self.store.frozen())
            except StoreUnavailable:
                continue
            at = now()
            for key in frozen:
                current = await self._fallback.get(key, at)
                if current < 1:
                    await self._fallback.add(key, 1 - current, at + FREEZE_MIRROR_KEEP, at)
            for key in mirrored - frozen:
                await self._fallback.add(key, -(1 << 40), at + FREEZE_MIRROR_KEEP, at)
            mirrored = frozen

    async def close(self) -> None:
        await self.store.close()
        await self._fallback.close()

    async def _metered(
        self,
        resource: str,
        call: Callable[[CounterStore], Awaitable[T]],
        fallback: Callable[[CounterStore], Awaitable[T]],
    ) -> tuple[T, Served]:
        if not self.shared:
            return await call(self.store), Served.LOCAL
        if self._breaker.allow():
            try:
                result = await call(self.store)
            except StoreUnavailable as exc:
                self._breaker.failed()
                log.error("meter.store_failed", error=str(exc), breaker=self._breaker.state.value)
            else:
                self._breaker.succeeded()
                return result, Served.SHARED
        if self._failure.mode_for(resource) is FailureMode.OPEN:
            return await fallback(self._fallback), Served.FALLBACK
        raise MeterUnavailable(
            "The quota service is unavailable, so records cannot be metered; the request was refused. Retry shortly.",
            max(1.0, self._breaker.retry_after),
        )

    def effective(self, limit: int, served: Served) -> int:
        """The limit that applied: the configured one, or its local share while failing open."""
        return self._scaled(limit) if served is Served.FALLBACK else limit

    def _scaled(self, limit: int) -> int:
        return max(1, math.floor(limit * self._failure.fallback_scale))
