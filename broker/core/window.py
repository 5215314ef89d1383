"""Which quota window a moment falls in: the current shift, or a fixed period."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Protocol

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


_last_window: tuple[object, Window | None] = (None, None)
"""The Window made for the occurrence last seen (one entry, swapped whole): occurrences are
cached objects, so a decision in the same occurrence as the one before reuses its Window."""


def current_shift(shifts: tuple[Shift, ...], now: float) -> Window | None:
    """The earliest-starting occurrence among the employee's shifts that covers `now`."""
    if len(shifts) == 1:  # most employees work one shift
        only = shifts[0].occurrence_at(now)
        if only is None:
            return None
        global _last_window  # noqa: PLW0603 - a one-entry cache
        seen, window = _last_window
        if seen is not only or window is None:
            window = Window(only.start, only.end)
            _last_window = (only, window)
        return window
    found = [o for s in shifts if (o := s.occurrence_at(now)) is not None]
    if not found:
        return None
    first = min(found, key=lambda o: o.start)
    return Window(first.start, first.end)


def next_shift_start(shifts: tuple[Shift, ...], now: float) -> float | None:
    starts = [t for s in shifts if (t := s.next_start(now)) is not None]
    return min(starts) if starts else None


def quota_key(employee: str, resource: str, window_start: float) -> str:
    """Braces make the employee a Redis Cluster hash tag: their keys share one shard."""
    return f"q:{{{employee}}}:{resource}:{int(window_start)}"


def quota_raise_key(employee: str, resource: str) -> str:
    """Extra records the help desk granted on top of the quota (`broker helpdesk quota
    raise`); the key expires when the raise does, so it ends by itself."""
    return f"qr:{{{employee}}}:{resource}"


class Windowed(Protocol):
    """A limit counted per window: a records quota or a probe budget."""

    @property
    def window(self) -> int: ...

    @property
    def per_shift(self) -> bool: ...


def freeze_key(employee: str) -> str:
    """Set (1) while the employee is frozen: refused everywhere until a person unfreezes them."""
    return f"f:{{{employee}}}"


def probe_key(employee: str, window_start: float) -> str:
    return f"p:{{{employee}}}:{int(window_start)}"


def quota_window(limit: Windowed, shift: Window | None, zone: tzinfo, now: float) -> Window:
    """The current shift for per-shift quotas; otherwise a fixed window aligned to local
    midnight in `zone`, so a `1d` quota resets when the employee's day starts."""
    if limit.per_shift and shift is not None:
        return shift
    length = FALLBACK_WINDOW if limit.per_shift else limit.window
    offset = datetime.fromtimestamp(now, zone).utcoffset()
    local = now + (offset.total_seconds() if offset else 0.0)
    start = now - local % length
    return Window(start, start + length)
