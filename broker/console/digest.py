"""What the console shows, folded from the feed once a second, off the request path.

Every figure is bounded: denials per reason in minute buckets for the last hour,
records per employee in hour buckets for the last day, a short timeline for the most
recently active employees, and the last flags. A digest that fell behind the ring
(more events in a second than it holds) counts what it missed and says so.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from broker.console.feed import ConsoleFeed

MINUTES = 60
"""Denials by reason are kept per minute for this many minutes."""
HOURS = 24
"""Records per employee are kept per hour for this many hours."""
TIMELINE_EMPLOYEES = 5_000
TIMELINE_EVENTS = 200
ADDRESSES = 50
FLAGS = 500
EMPLOYEES_PER_HOUR = 50_000
CLOSING = frozenset({"unfreeze", "dismiss"})
"""Console actions after which an employee's earlier flags are no longer open."""


@dataclass(slots=True)
class Address:
    first: str
    last: str
    requests: int = 0


@dataclass(slots=True)
class Timeline:
    """One employee's recent decisions, console actions and flags, and their addresses."""

    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=TIMELINE_EVENTS))
    addresses: OrderedDict[str, Address] = field(default_factory=OrderedDict)

    def add(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        client, when = event.get("client"), str(event.get("time", ""))
        if not client or event.get("event") not in (None, "decision"):
            return  # a console or help-desk action's address is the operator's, not the employee's
        seen = self.addresses.get(client)
        if seen is None:
            seen = self.addresses[client] = Address(when, when)
            if len(self.addresses) > ADDRESSES:
                self.addresses.popitem(last=False)
        self.addresses.move_to_end(client)
        seen.last = when
        seen.requests += 1


@dataclass(slots=True)
class Standing:
    """One employee's figures over the last day, for the top-employees table."""

    employee: str
    records: int
    requests: int
    denials: int


class Digest:
    def __init__(self, feed: ConsoleFeed) -> None:
        self._feed = feed
        self._position = 0
        self.missed = 0
        self.denials: OrderedDict[int, Counter[str]] = OrderedDict()
        """minute (epoch // 60) -> reason -> denials."""
        self._hours: OrderedDict[int, dict[str, list[int]]] = OrderedDict()
        """hour -> employee -> [records, requests, denials]."""
        self.timelines: OrderedDict[str, Timeline] = OrderedDict()
        self.flags: deque[tuple[int, dict[str, Any]]] = deque(maxlen=FLAGS)
        """(order folded, flag event): the last flags raised."""
        self._closed: dict[str, int] = {}
        """employee -> order of the console action (unfreeze, dismiss) that closed their flags."""
        self.decisions = 0
        self._folded = 0

    def catch_up(self, now: float) -> None:
        """Fold what the feed received since the last call (events are dated by `now`:
        the digest runs every second, so a figure is at most that late)."""
        events, self._position, missed = self._feed.since(self._position)
        self.missed += missed
        if not events:
            return
        minute, hour = int(now // 60), int(now // 3600)
        reasons = self._bucket(self.denials, minute, MINUTES, Counter)
        employees = self._bucket(self._hours, hour, HOURS, dict)
        for event in events:
            self._folded += 1
            kind = event.get("event")
            employee = event.get("employee")
            if kind == "signal":
                self.flags.append((self._folded, event))
            elif kind == "console" and employee and event.get("action") in CLOSING:
                self._closed[employee] = self._folded
                if len(self._closed) > FLAGS:
                    self._closed.pop(next(iter(self._closed)))
            elif kind not in (None, "decision", "console"):
                continue
            if employee:
                self._timeline(employee).add(event)
            if kind is None or kind == "decision":
                self.decisions += 1
                self._count(event, employee, reasons, employees)

    def _count(
        self, event: dict[str, Any], employee: str | None, reasons: Counter[str], employees: dict[str, list[int]]
    ) -> None:
        denied = event.get("verdict") != "allow"
        if denied:
            reasons[str(event.get("reason"))] += 1
        if not employee:
            return
        figures = employees.get(employee)
        if figures is None:
            if len(employees) >= EMPLOYEES_PER_HOUR:
                return
            figures = employees[employee] = [0, 0, 0]
        returned = event.get("records_returned")
        figures[0] += returned if isinstance(returned, int) else 0
        figures[1] += 1
        figures[2] += denied

    @staticmethod
    def _bucket(buckets: OrderedDict[int, Any], key: int, keep: int, make: type) -> Any:
        bucket = buckets.get(key)
        if bucket is None:
            bucket = buckets[key] = make()
            while buckets and next(iter(buckets)) <= key - keep:
                buckets.popitem(last=False)
        return bucket

    def _timeline(self, employee: str) -> Timeline:
        timeline = self.timelines.get(employee)
        if timeline is None:
            timeline = self.timelines[employee] = Timeline()
            if len(self.timelines) > TIMELINE_EMPLOYEES:
                self.timelines.popitem(last=False)
        else:
            self.timelines.move_to_end(employee)
        return timeline

    def open_flags(self) -> list[dict[str, Any]]:
        """Flags no person has closed yet (by unfreezing or dismissing), newest first."""
        return [flag for order, flag in reversed(self.flags) if order > self._closed.get(str(flag.get("employee")), 0)]

    def top_employees(self, count: int = 10) -> list[Standing]:
        """The employees who took the most records over the last day."""
        totals: dict[str, list[int]] = {}
        for employees in self._hours.values():
            for employee, figures in employees.items():
                total = totals.setdefault(employee, [0, 0, 0])
                for i in range(3):
                    total[i] += figures[i]
        ranked = sorted(totals.items(), key=lambda item: (-item[1][0], -item[1][1], item[0]))[:count]
        return [Standing(employee, *figures) for employee, figures in ranked]

    def denials_by_reason(self, now: float, minutes: int = 30) -> dict[str, list[int]]:
        """reason -> denials per minute over the last `minutes`, oldest first."""
        last = int(now // 60)
        first = last - minutes + 1
        series: dict[str, list[int]] = {}
        for minute, reasons in self.denials.items():
            if minute < first:
                continue
            for reason, count in reasons.items():
                series.setdefault(reason, [0] * minutes)[minute - first] += count
        return dict(sorted(series.items(), key=lambda item: -sum(item[1])))
