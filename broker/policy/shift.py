"""Recurring shift windows in a branch's own time zone.

Casbin's `timeMatch` only compares absolute datetimes in server-local time, so shifts
are evaluated here: a window `22:00-06:00` on `Mon-Fri` means it starts on those days
and may run past midnight into the next day. The end is exclusive.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
MINUTES_PER_DAY = 24 * 60


@dataclass(frozen=True, slots=True)
class Occurrence:
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class Shift:
    name: str
    start: int
    """Minutes after local midnight."""
    end: int
    """Minutes after local midnight, 1..1440; at or before `start` it ends the next day."""
    days: frozenset[int]
    """Weekdays (0 = Monday) on which the shift starts."""
    zone: ZoneInfo

    @property
    def wraps(self) -> bool:
        return self.end <= self.start

    def occurrence_at(self, when: float) -> Occurrence | None:
        """The occurrence of this shift that contains `when`, if any."""
        last = _LAST_SEEN.get(self)
        if last is not None and last.start <= when < last.end:
            return last  # most decisions fall in the occurrence the previous one did
        today = datetime.fromtimestamp(when, self.zone).date()
        for day in (today - timedelta(days=1), today):
            window = self._window(day)
            if window and window.start <= when < window.end:
                _LAST_SEEN[self] = window
                return window
        return None

    def next_start(self, after: float) -> float | None:
        """When the next occurrence starts strictly after `after` (within a week)."""
        today = datetime.fromtimestamp(after, self.zone).date()
        for offset in range(9):
            window = self._window(today + timedelta(days=offset))
            if window and window.start > after:
                return window.start
        return None

    def _window(self, day: date) -> Occurrence | None:
        return _occurrence(self, day)


_LAST_SEEN: dict[Shift, Occurrence] = {}
"""The occurrence each shift was last found in; shifts are few, so this stays small."""


@lru_cache(maxsize=16_384)
def _occurrence(shift: Shift, day: date) -> Occurrence | None:
    """A shift's window on one local day; cached because every decision asks for today's
    and yesterday's, and building zone-aware datetimes is most of a decision's cost."""
    if day.weekday() not in shift.days:
        return None
    start = _local(day, shift.start, shift.zone)
    end_day = day + timedelta(days=1) if shift.wraps or shift.end == MINUTES_PER_DAY else day
    end = _local(end_day, shift.end % MINUTES_PER_DAY, shift.zone)
    return Occurrence(start, end)


def _local(day: date, minutes: int, zone: ZoneInfo) -> float:
    moment = datetime.combine(day, time(minutes // 60, minutes % 60), tzinfo=zone)
    return moment.timestamp()


def parse_clock(text: str, *, allow_24: bool) -> int:
    """`HH:MM` as minutes after midnight; `24:00` only as an end."""
    hours, sep, minutes = text.partition(":")
    if not (sep and hours.isdigit() and minutes.isdigit() and len(minutes) == 2):
        raise ValueError(f"time {text!r} is not HH:MM")
    value = int(hours) * 60 + int(minutes)
    limit = MINUTES_PER_DAY if allow_24 else MINUTES_PER_DAY - 1
    if int(minutes) > 59 or value > limit:
        raise ValueError(f"time {text!r} is out of range")
    return value


def parse_days(text: str) -> frozenset[int]:
    """`Mon-Fri`, `Sat+Sun`, `Mon+Wed+Fri`, `Fri-Mon` (wrapping) or `daily`."""
    if text == "daily":
        return frozenset(range(7))
    days: set[int] = set()
    for part in text.split("+"):
        first, dash, last = part.partition("-")
        start, stop = _day(first), _day(last) if dash else _day(first)
        span = (stop - start) % 7
        days.update((start + step) % 7 for step in range(span + 1))
    return frozenset(days)


def _day(name: str) -> int:
    try:
        return DAY_NAMES.index(name)
    except ValueError:
        raise ValueError(f"day {name!r} is not one of {', '.join(DAY_NAMES)}") from None


def parse_zone(name: str) -> ZoneInfo:
    """An IANA zone; `localtime` (the server's own zone) is refused: shifts belong to a branch."""
    try:
        if name == "localtime":
            raise ValueError(name)
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"time zone {name!r} is unknown (use an IANA name like Asia/Shanghai)") from None


def build_shift(name: str, start: str, end: str, days: str, zone: str) -> Shift:
    begin = parse_clock(start, allow_24=False)
    finish = parse_clock(end, allow_24=True)
    if begin == finish:
        raise ValueError(f"shift {name!r} starts and ends at {start}: it is empty")
    return Shift(name, begin, finish, parse_days(days), parse_zone(zone))
