"""Which quota window a moment falls in: the current shift, or a fixed period."""

from __future__ import annotations

from dataclasses import dataclass

from broker.policy.limit import RecordLimit
from broker.policy.shift import Shift

FALLBACK_WINDOW = 86_400
"""A per-shift quota for someone outside every shift (only seen by `/-/me`): one day."""


@dataclass(frozen=True, slots=True)
class Window:
    start: float
    end: float

    @property
    def seconds(self) -> int:
        return int(self.end - self.start)


def current_shift(shifts: tuple[Shift, ...], now: float) -> Window | None:
    """The earliest-starting occurrence among the employee's shifts that covers `now`."""
    found = [o for s in shifts if (o := s.occurrence_at(now)) is not None]
    if not found:
        return None
    first = min(found, key=lambda o: o.start)
    return Window(first.start, first.end)


def next_shift_start(shifts: tuple[Shift, ...], now: float) -> float | None:
    starts = [t for s in shifts if (t := s.next_start(now)) is not None]
    return min(starts) if starts else None


def quota_window(limit: RecordLimit, shifts: tuple[Shift, ...], now: float) -> Window:
    if limit.per_shift:
        shift = current_shift(shifts, now)
        if shift is not None:
            return shift
        length = FALLBACK_WINDOW
    else:
        length = limit.window
    start = now - now % length
    return Window(start, start + length)
