"""A circuit breaker in front of a remote counter store.

When Redis is down every call would wait for its timeout; after a few failures in a row
the breaker opens and calls fail at once for a cool-down, then one probe is let through.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(self, clock: Callable[[], float], *, failures: int = 3, reset_after: float = 5.0) -> None:
        self._clock = clock
        self._threshold = failures
        self._reset_after = reset_after
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at >= self._reset_after:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    @property
    def retry_after(self) -> float:
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._opened_at + self._reset_after - self._clock())

    def allow(self) -> bool:
        """May a call go to the store now? In half-open state, only one probe at a time."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def succeeded(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._probing = False

    def failed(self) -> None:
        self._failures += 1
        self._probing = False
        if self._failures >= self._threshold or self._opened_at is not None:
            self._opened_at = self._clock()
