"""The volume signal: records per shift far above what the employee's peers take.

The roster already says who the peers are (the same roles in the same branches), so no
learning period is needed: the norm is what those peers took in their current or last
window, as this process saw it.

Cost on the event loop: an event that returned no records costs nothing here; one that
did costs a dictionary lookup, two additions and a bounded deque append. The peers are
only read when the employee's count reaches its next check point, which is at most a
tenth above the last one (so a few dozen checks per shift at most, each a pass over
the peers who took records), and a window rolls over once per shift per employee.
State is one tally per roster employee who took records (the roster bounds it).
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from broker.core.clock import iso
from broker.core.window import current_shift, quota_window
from broker.policy.employee import Assignment, Employee
from broker.policy.index import PolicyIndex
from broker.signals.flag import EVIDENCE_IDS, Flag, Severity
from broker.signals.rules import Volume

PEER_MEMORY = 7 * 86_400
"""A peer whose last window ended longer ago than this no longer sets the norm."""
CHECK_STEP = 10
"""Between checks an employee's count grows by at most 1/CHECK_STEP of itself, so a
flag that the peers' takes would allow earlier comes at most 10 % late."""


@dataclass(slots=True)
class _Tally:
    """One employee's records in their current window, and in the one before it."""

    employee: Employee
    start: float
    end: float
    records: int = 0
    previous: int = 0
    """Records in the last window before this one (what peers are compared with once
    this window has just started)."""
    next_check: float = 0.0
    ids: deque[str | None] = field(default_factory=lambda: deque(maxlen=EVIDENCE_IDS))
    """The latest decisions that returned records (their ids, as the audit wrote them)."""

    def take(self) -> int:
        """What this employee took in a window: the current one or, if larger, the last."""
        return self.records if self.records > self.previous else self.previous


@dataclass(frozen=True, slots=True)
class Norm:
    """What an employee's records are compared with, and why."""

    basis: str
    """Whose takes set the bar: "peers", "quota", or "none" (no peers and an unlimited
    quota: no flag)."""
    bar: float
    """Records at or above this raise the flag (infinite with no norm)."""
    evidence: dict[str, Any]


class VolumeWatch:
    def __init__(self, roster: Callable[[], PolicyIndex | None], on_flag: Callable[[Flag], None]) -> None:
        self._roster = roster
        self._on_flag = on_flag
        self._tallies: dict[str, _Tally] = {}
        self._groups: dict[Assignment, set[str]] = {}
        """Peer group (roles per branch and branch-less roles) -> employees with a tally."""

    def observe(self, rule: Volume, employee: str, returned: int, event: dict[str, Any], now: float) -> None:
        """Count `returned` records (> 0) of one audit event against `employee`."""
        tally = self._tallies.get(employee)
        if tally is None or now >= tally.end:
            tally = self._roll(rule, employee, tally, now)
            if tally is None:
                return
        tally.records += returned
        tally.ids.append(event.get("decision_id"))
        if tally.records >= tally.next_check:
            self._check(rule, employee, tally, event, now)

    def forget(self, employee: str) -> None:
        """Start the window's count afresh for someone a person has just unfrozen."""
        tally = self._tallies.get(employee)
        if tally is not None:
            tally.records, tally.next_check = 0, 0.0
            tally.ids.clear()

    def _roll(self, rule: Volume, employee_id: str, tally: _Tally | None, now: float) -> _Tally | None:
        """A new window for `employee_id` (their shift now, or a fixed period), under the
        live roster: someone no longer in it is forgotten, someone whose roles or
        branches changed moves to their new peer group."""
        index = self._roster()
        employee = index.employees.get(employee_id) if index is not None else None
        if tally is not None:
            self._groups.get(tally.employee.assignment, set()).discard(employee_id)
        if employee is None:  # not in the roster (an identity-provider principal): no peers to know
            self._tallies.pop(employee_id, None)
            return None
        shift = current_shift(employee.shifts, now) if rule.per_shift else None
        window = quota_window(rule, shift, employee.zone, now)
        previous = tally.records if tally is not None and now - tally.end < PEER_MEMORY else 0
        fresh = _Tally(employee, window.start, window.end, previous=previous, next_check=rule.min_records)
        self._tallies[employee_id] = fresh
        self._groups.setdefault(employee.assignment, set()).add(employee_id)
        return fresh

    def _check(self, rule: Volume, employee_id: str, tally: _Tally, event: dict[str, Any], now: float) -> None:
        norm = self.norm(rule, employee_id, tally, now)
        records = tally.records
        if records >= norm.bar:
            tally.next_check = float("inf")  # one flag per window
            self._on_flag(self._flag(rule, employee_id, tally, norm, event, now))
            return
        tally.next_check = min(norm.bar, records + records // CHECK_STEP + 1)

    def norm(self, rule: Volume, employee_id: str, tally: _Tally, now: float) -> Norm:
        """The peers' median take times `factor` when there are `min_peers` peers who
        took records, else `quota_share` of the employee's own quotas; never below
        `min_records`."""
        takes = self._peer_takes(employee_id, tally.employee.assignment, now)
        if len(takes) >= rule.min_peers:
            median = statistics.median(takes)
            bar = max(float(rule.min_records), _just_above(rule.factor * median))
            evidence = {
                "peers": len(takes),
                "peer_median": median,
                "peer_mean": round(statistics.fmean(takes), 1),
                "factor": rule.factor,
            }
            return Norm("peers", bar, evidence)
        quota = self._quota(tally.employee)
        if quota is None:
            return Norm("none", float("inf"), {"peers": len(takes)})
        bar = max(float(rule.min_records), rule.quota_share * quota)
        return Norm("quota", bar, {"peers": len(takes), "quota": quota, "quota_share": rule.quota_share})

    def _peer_takes(self, employee_id: str, group: Assignment, now: float) -> list[int]:
        takes = []
        for peer in self._groups.get(group, ()):
            tally = self._tallies[peer]
            take = tally.take()
            if peer != employee_id and take > 0 and now - tally.end < PEER_MEMORY:
                takes.append(take)
        return takes

    def _quota(self, employee: Employee) -> int | None:
        """The sum of the employee's record quotas over the resources their roles have
        limits for; None when one of them is unlimited (or there is none)."""
        index = self._roster()
        if index is None:
            return None
        resources = {resource for (_, resource) in index.record_limits}
        quotas = [index.record_limit(employee, r) for r in sorted(resources)]
        amounts = [limit.quota for limit in quotas if limit is not None]
        if not amounts or None in amounts:
            return None
        return sum(a for a in amounts if a is not None)

    def _flag(
        self, rule: Volume, employee_id: str, tally: _Tally, norm: Norm, event: dict[str, Any], now: float
    ) -> Flag:
        records = tally.records
        groups = {b: sorted(r) for b, r in sorted(tally.employee.roles_by_branch.items())}
        evidence: dict[str, Any] = {
            "records": records,
            "window": {"start": iso(tally.start), "end": iso(tally.end), "shift": rule.per_shift},
            "basis": norm.basis,
            **norm.evidence,
            "threshold": norm.bar,
            "min_records": rule.min_records,
            "peer_group": {"branches": groups, "roles": sorted(tally.employee.global_roles)},
            "decision_ids": list(tally.ids),
            "last_decision_id": event.get("decision_id"),
        }
        if norm.basis == "peers":
            times = records / norm.evidence["peer_median"]
            detail = (
                f"{employee_id} took {records} records this window, {times:.1f}x the median "
                f"of {norm.evidence['peers']} peers ({norm.evidence['peer_median']:g})"
            )
        else:
            detail = (
                f"{employee_id} took {records} records this window, with fewer than {rule.min_peers} "
                f"peers to compare: at least {rule.quota_share:g} of their quota of {norm.evidence['quota']}"
            )
        return Flag("volume", employee_id, rule.action, detail, evidence, now, _severity(rule, records, norm))


def _just_above(value: float) -> float:
    """The least whole number of records strictly above `value`."""
    return float(int(value) + 1)


def _severity(rule: Volume, records: int, norm: Norm) -> Severity:
    """High when the take is at least twice the factor times the peer median; medium
    otherwise, and always without peers (a busy day can drain an honest quota)."""
    if norm.basis == "peers" and records >= 2 * rule.factor * norm.evidence["peer_median"]:
        return "high"
    return "medium"
