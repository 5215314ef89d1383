"""Time as a parameter: nothing in broker reads the wall clock except a Clock."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, tzinfo
from typing import Protocol

CLOCK_ENV = "BROKER_CLOCK"


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch (UTC)."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()


class OffsetClock:
    """Starts at a chosen instant and then runs at real speed.

    Used by `broker demo` and end-to-end tests to land inside (or outside) a shift
    deterministically without freezing time, so rate windows still advance.
    """

    def __init__(self, start: float) -> None:
        self._offset = start - time.time()

    def now(self) -> float:
        return time.time() + self._offset


class FakeClock:
    """A clock that moves only when told to; for tests."""

    def __init__(self, start: float) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def set(self, when: float) -> None:
        self._now = when

    def advance(self, seconds: float) -> None:
        self._now += seconds


def parse_instant(text: str) -> float:
    """An ISO 8601 instant with an explicit offset, e.g. `2026-12-01T10:00:00+08:00`."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise ValueError(f"not an ISO 8601 instant: {text!r}") from exc
    if moment.tzinfo is None:
        raise ValueError(f"instant {text!r} has no UTC offset; add one, e.g. +08:00 or Z")
    return moment.timestamp()


def clock_from(start: str | None) -> Clock:
    """The clock the config or the BROKER_CLOCK environment variable asks for."""
    chosen = os.environ.get(CLOCK_ENV) or start
    if not chosen:
        return SystemClock()
    return OffsetClock(parse_instant(chosen))


def iso(when: float, zone: tzinfo = UTC) -> str:
    """An instant for people: in `zone` (an employee's shift time zone) when known."""
    text = datetime.fromtimestamp(when, zone).isoformat()
    return text.replace("+00:00", "Z") if zone is UTC else text
