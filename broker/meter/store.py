"""Where counters live. The interface is small so a shared store (Redis) can slot in.

Every operation is atomic with respect to the others on the same key: a check and its
charge happen together, so concurrent requests cannot both squeeze under a limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, NamedTuple, Protocol

from mypy_extensions import mypyc_attr


class StoreUnavailable(Exception):
    """The counter store could not answer in time; the meter applies the failure mode."""


class ExpiredWindow(ValueError):
    """A charge against a quota window that has already ended. Written, its key would
    expire at once and the quota would be free; so it is never written, and the request
    is refused (the caller has a bug). Not a StoreUnavailable: no fallback may grant it."""


@dataclass(frozen=True, slots=True)
class Persistence:
    """Whether the store's counters outlive a restart of the store. A store that forgets
    them hands every employee a fresh quota when it restarts."""

    durable: bool | None
    """None: the store would not say (e.g. CONFIG is disabled on a managed Redis)."""
    detail: str


# The classes below are made several times per request. Written out by hand, with Final
# attributes, a compiled build makes one in ~40 ns and refuses assignment to it; a frozen
# dataclass took ~900 ns (its __init__ sets each field through object.__setattr__).


class Reservation:
    __slots__ = ("granted", "raised", "used")

    def __init__(self, granted: bool, used: int, raised: int = 0) -> None:
        self.granted: Final = granted
        self.used: Final = used
        """The counter after the reservation (or as it stands, when refused)."""
        self.raised: Final = raised
        """Records the help desk added to the limit for now (the quota's raise key)."""

    def _key(self) -> tuple[bool, int, int]:
        return (self.granted, self.used, self.raised)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Reservation) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Reservation(granted={self.granted!r}, used={self.used!r}, raised={self.raised!r})"


class RateOutcome:
    __slots__ = ("allowed", "remaining", "reset_after", "retry_after")

    def __init__(self, allowed: bool, remaining: int, reset_after: float, retry_after: float) -> None:
        self.allowed: Final = allowed
        self.remaining: Final = remaining
        self.reset_after: Final = reset_after
        self.retry_after: Final = retry_after

    def __repr__(self) -> str:
        return (
            f"RateOutcome(allowed={self.allowed!r}, remaining={self.remaining!r}, "
            f"reset_after={self.reset_after!r}, retry_after={self.retry_after!r})"
        )


class RateAsk:
    __slots__ = ("key", "limit", "period")

    def __init__(self, key: str, limit: int, period: float) -> None:
        self.key: Final = key
        self.limit: Final = limit
        self.period: Final = period

    def with_limit(self, limit: int) -> RateAsk:
        return RateAsk(self.key, limit, self.period)

    def __repr__(self) -> str:
        return f"RateAsk(key={self.key!r}, limit={self.limit!r}, period={self.period!r})"


class QuotaAsk:
    __slots__ = ("amount", "expires_at", "key", "limit", "raise_key")

    def __init__(self, key: str, amount: int, limit: int, expires_at: float, raise_key: str = "") -> None:
        self.key: Final = key
        self.amount: Final = amount
        self.limit: Final = limit
        self.expires_at: Final = expires_at
        self.raise_key: Final = raise_key
        """Where a temporary raise of `limit` is kept ("" for none): read in the same step."""

    def with_limit(self, limit: int) -> QuotaAsk:
        return QuotaAsk(self.key, self.amount, limit, self.expires_at, self.raise_key)

    def __repr__(self) -> str:
        return (
            f"QuotaAsk(key={self.key!r}, amount={self.amount!r}, limit={self.limit!r}, "
            f"expires_at={self.expires_at!r}, raise_key={self.raise_key!r})"
        )


@dataclass(frozen=True, slots=True)
class Gate:
    """A counter that must be below `limit` for the request to be admitted: checked at
    admission, written elsewhere (`add`): a probe budget charged when a request turns out
    to be a probe, a freeze set by a person or a signal."""

    key: str
    limit: int


class Admission(NamedTuple):
    """What admitting one request found. `closed_gate` is the index of the first gate
    found closed (its counter in `gate_used`), in which case neither the rate nor the
    quota was checked or charged. (A tuple: one is built per request.)"""

    rate: RateOutcome | None
    quota: Reservation | None
    closed_gate: int | None = None
    gate_used: int = 0


class CounterStore(Protocol):
    async def admit(
        self, rate: RateAsk | None, quota: QuotaAsk | None, now: float, gates: tuple[Gate, ...] = ()
    ) -> Admission:
        """A request's gates (freeze, probe budget), rate check and, if all pass, its
        quota reservation, together (one round trip for a remote store). A refused check
        charges nothing after it."""
        ...

    async def add(self, key: str, delta: int, expires_at: float, now: float) -> int:
        """Adjust `key` unconditionally (settling a reservation); returns the new value."""
        ...

    async def get(self, key: str, now: float) -> int: ...

    async def put(self, key: str, value: int, expires_at: float, now: float) -> int:
        """Set `key` to `value` until `expires_at` (0: delete it); returns what it was.
        The lifetime is exactly what is asked: a help desk's raise for 2 h ends then."""
        ...

    async def expires_in(self, key: str, now: float) -> float | None:
        """Seconds until `key` expires (None: it is not set); for the help desk's view."""
        ...

    async def ping(self) -> None:
        """Raise StoreUnavailable if the store cannot be reached (opens a connection)."""
        ...

    async def frozen(self) -> list[str]:
        """Every freeze key set now (see broker.core.window.freeze_key)."""
        ...

    async def persistence(self) -> Persistence:
        """Whether the counters survive a restart of the store itself."""
        ...

    async def close(self) -> None: ...


@mypyc_attr(allow_interpreted_subclasses=True)  # a failing store for tests (and embedders) is made from it
class MemoryCounterStore:
    """Counters in this process: the embedded default for a single replica.

    Operations never await, so on one event loop each is atomic by construction.
    Expired keys are swept every few thousand writes to keep memory bounded.

    Values live in flat dicts of numbers (no tuple per entry): ints and floats are not
    tracked by the cyclic GC, so a new key does not bring the next collection closer.
    """

    SWEEP_EVERY = 4096

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._expires: dict[str, float] = {}
        self._tats: dict[str, float] = {}
        """Theoretical arrival time per rate key; the key expires at its TAT."""
        self._writes = 0
        cls = type(self)
        self._direct = cls.hit_rate is MemoryCounterStore.hit_rate and cls.reserve is MemoryCounterStore.reserve
        """`admit` may skip the two coroutines: no subclass (a test's failing store) wraps them."""

    async def admit(
        self, rate: RateAsk | None, quota: QuotaAsk | None, now: float, gates: tuple[Gate, ...] = ()
    ) -> Admission:
        if self._direct:
            return self.admit_now(rate, quota, now, gates)
        closed = self._closed_gate(gates, now)
        if closed is not None:
            return closed
        return await self._admit_via_methods(rate, quota, now)

    def admit_now(
        self, rate: RateAsk | None, quota: QuotaAsk | None, now: float, gates: tuple[Gate, ...] = ()
    ) -> Admission:
        """`admit` without a coroutine (nothing here awaits), for a caller deciding a
        statement per message; only when `direct` (no subclass wraps the counting methods)."""
        for index, gate in enumerate(gates):  # _closed_gate, inlined: a freeze gate per decision
            used = self._current(gate.key, now)
            if used >= gate.limit:
                return Admission(None, None, index, used)
        outcome = self._hit_rate(rate.key, rate.limit, rate.period, now) if rate is not None else None
        if quota is None or (outcome is not None and not outcome.allowed):
            return Admission(outcome, None)
        return Admission(
            outcome, self._reserve(quota.key, quota.amount, quota.limit, quota.expires_at, now, quota.raise_key)
        )

    @property
    def direct(self) -> bool:
        """Whether `admit_now` may stand for `admit` (see __init__)."""
        return self._direct

    def _closed_gate(self, gates: tuple[Gate, ...], now: float) -> Admission | None:
        for index, gate in enumerate(gates):
            used = self._current(gate.key, now)
            if used >= gate.limit:
                return Admission(None, None, index, used)
        return None

    async def _admit_via_methods(self, rate: RateAsk | None, quota: QuotaAsk | None, now: float) -> Admission:
        outcome = await self.hit_rate(rate.key, rate.limit, rate.period, now) if rate else None
        if quota is None or (outcome is not None and not outcome.allowed):
            return Admission(outcome, None)
        booked = await self.reserve(quota.key, quota.amount, quota.limit, quota.expires_at, now, quota.raise_key)
        return Admission(outcome, booked)

    async def reserve(
        self, key: str, amount: int, limit: int, expires_at: float, now: float, raise_key: str = ""
    ) -> Reservation:
        return self._reserve(key, amount, limit, expires_at, now, raise_key)

    async def add(self, key: str, delta: int, expires_at: float, now: float) -> int:
        value = max(0, self._current(key, now) + delta)
        self._store(key, value, expires_at, now)
        return value

    async def get(self, key: str, now: float) -> int:
        return self._current(key, now)

    async def put(self, key: str, value: int, expires_at: float, now: float) -> int:
        before = self._current(key, now)
        if value:
            self._store(key, value, expires_at, now)
        else:
            self._counts.pop(key, None)
            self._expires.pop(key, None)
        return before

    async def expires_in(self, key: str, now: float) -> float | None:
        return self._expires[key] - now if self._current(key, now) else None

    async def hit_rate(self, key: str, limit: int, period: float, now: float) -> RateOutcome:
        return self._hit_rate(key, limit, period, now)

    async def ping(self) -> None:
        return None

    async def frozen(self) -> list[str]:
        return [key for key, value in self._counts.items() if key.startswith("f:") and value >= 1]

    async def persistence(self) -> Persistence:
        return Persistence(False, "counters live in the broker process: a broker restart resets every quota")

    async def close(self) -> None:
        self._counts.clear()
        self._expires.clear()
        self._tats.clear()

    def _reserve(
        self, key: str, amount: int, limit: int, expires_at: float, now: float, raise_key: str = ""
    ) -> Reservation:
        used = self._current(key, now)
        raised = self._current(raise_key, now) if raise_key else 0
        if used + amount > limit + raised:
            return Reservation(False, used, raised)
        self._store(key, used + amount, expires_at, now)
        return Reservation(True, used + amount, raised)

    def _hit_rate(self, key: str, limit: int, period: float, now: float) -> RateOutcome:
        interval = period / limit
        stored = self._tats.get(key)
        tat = stored if stored is not None and stored > now else now
        new_tat = tat + interval
        if new_tat - now > period + 1e-6:
            retry = tat + interval - period - now
            return RateOutcome(False, 0, tat - now, max(retry, 0.001))
        self._tats[key] = new_tat
        self._tick(now)
        remaining = int((period - (new_tat - now)) / interval + 1e-6)
        return RateOutcome(True, remaining, new_tat - now, 0.0)

    def _current(self, key: str, now: float) -> int:
        expires = self._expires.get(key)
        if expires is None or expires <= now:
            return 0
        return self._counts[key]

    def _store(self, key: str, value: int, expires_at: float, now: float) -> None:
        self._counts[key] = value
        self._expires[key] = expires_at
        self._tick(now)

    def _tick(self, now: float) -> None:
        self._writes += 1
        if self._writes % self.SWEEP_EVERY == 0:
            self._expires = {k: v for k, v in self._expires.items() if v > now}
            self._counts = {k: v for k, v in self._counts.items() if k in self._expires}
            self._tats = {k: v for k, v in self._tats.items() if v > now}
