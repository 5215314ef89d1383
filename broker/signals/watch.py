"""Reading the audit stream for the marks of a rented login, as it is written.

Every audit event (both doors, allow and deny) passes `observe` on the event loop, after
the answer was sent: a few dictionary operations per event, state bounded per employee
and in the number of employees. A signal fires once per employee per window, with its
evidence (addresses, record numbers, reasons, decision ids), and is handed to `on_flag`.
"""

from __future__ import annotations

import itertools
import re
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from broker.policy.index import PolicyIndex
from broker.signals.flag import EVIDENCE_IDS, Flag, Severity
from broker.signals.rules import Action, SharedLogin, SignalRules
from broker.signals.volume import VolumeWatch

__all__ = ["EVIDENCE_IDS", "Flag", "SignalWatcher", "record_id"]

MAX_EMPLOYEES = 50_000
"""Employees whose recent activity is kept; the least recently seen are forgotten first."""
PROBING_REASONS = frozenset(
    {
        "policy.other_branch", "policy.not_permitted", "route.unknown", "shift.outside", "bulk.over_cap",
        "bulk.unbounded", "upstream.other_branch", "upstream.too_many_records", "upstream.refused",
        "probe.exceeded", "statement.refused",
    }
)  # fmt: skip
"""Refusals that test what the policy allows or what the data holds: a person doing their
job meets a few a shift, a script probing meets them by the dozen. Not the quota or the
request rate: an honest app retrying on 429 would trip them."""
_NUMBERED = re.compile(r"(\D*)(\d+)\Z")


_DIGIT = re.compile(r"[0-9]")


def record_id(path: str) -> str | None:
    """The record a path names: its last segment holding a digit, percent-decoded
    (`/api/waybills/SF1000000042`, `/api/waybills/SF-1000%34/scans`, a UUID), or None.
    Runs on every allowed HTTP event: one regex search per segment, no generators."""
    path = path.partition("?")[0]
    if "%" in path:
        path = unquote(path)
    for segment in reversed(path.split("/")):
        if len(segment) >= 3 and _DIGIT.search(segment):
            return segment
    return None


@dataclass(slots=True)
class _Recent:
    addresses: dict[str, float] = field(default_factory=dict)
    refusals: deque[tuple[float, str, str]] = field(default_factory=deque)
    records: dict[str, float] = field(default_factory=dict)
    fired: dict[str, float] = field(default_factory=dict)
    """signal -> until when it stays quiet (one flag per window)."""


class SignalWatcher:
    def __init__(
        self,
        rules: Callable[[], SignalRules | None],
        now: Callable[[], float],
        on_flag: Callable[[Flag], None],
        roster: Callable[[], PolicyIndex | None] = lambda: None,
    ) -> None:
        """`roster` is the live policy's index: who the volume signal's peers are."""
        self._rules = rules
        self._now = now
        self._on_flag = on_flag
        self._recent: OrderedDict[str, _Recent] = OrderedDict()
        self._volume = VolumeWatch(roster, on_flag)

    def observe(self, event: dict[str, Any]) -> None:
        employee = event.get("employee")
        rules = self._rules()
        if not employee or rules is None or event.get("event") not in (None, "decision"):
            return
        recent = self._recent.get(employee)
        if recent is None:
            recent = self._recent[employee] = _Recent()
            if len(self._recent) > MAX_EMPLOYEES:
                self._recent.popitem(last=False)
        else:
            self._recent.move_to_end(employee)
        now = self._now()
        shared, client = rules.shared_login, event.get("client")
        if shared is not None and client:
            addresses = recent.addresses
            addresses[str(client)] = now
            # No branch's allowance is below shared.addresses, so with no more addresses
            # than that this cannot fire, and those seen outside the window can wait for
            # the next new one to be swept (the common case: one address, every event).
            if len(addresses) > shared.addresses:
                self._shared_login(shared, employee, recent, event, now)
        if event.get("verdict") != "allow":
            if rules.probing is not None and event.get("reason") in PROBING_REASONS:
                self._probing(rules, employee, recent, event, now)
        elif rules.enumeration is not None and event.get("door") == "http":
            self._enumeration(rules, employee, recent, event, now)
        if rules.volume is not None and (returned := event.get("records_returned")) and event.get("resource"):
            self._volume.observe(rules.volume, employee, returned, event, now)

    def forget(self, employee: str) -> None:
        """Start afresh for someone a person has just unfrozen."""
        self._recent.pop(employee, None)
        self._volume.forget(employee)

    def _shared_login(
        self, rule: SharedLogin, employee: str, recent: _Recent, event: dict[str, Any], now: float
    ) -> None:
        """The event's address is already in `recent.addresses`, and more of them than
        `rule.addresses`: sweep those outside the window and fire if still too many."""
        addresses = recent.addresses
        for address, seen in list(addresses.items()):
            if now - seen > rule.window:
                del addresses[address]
        allowed = max([rule.addresses, *(rule.branches.get(b, 0) for b in event.get("branches") or ())])
        # Keep the few seen last past the allowance, no more: with that many in the window
        # the signal fires (or has, and is quiet for a window), so the rest change
        # nothing, and a login rotating through addresses (an IPv6 prefix) cannot grow
        # this, the sweep above, or the flag's evidence without bound.
        while len(addresses) > allowed + EVIDENCE_IDS:
            del addresses[min(addresses, key=addresses.__getitem__)]  # the least recently seen
        if len(addresses) > allowed:
            evidence = {"addresses": sorted(addresses), "allowed": allowed, "window_seconds": rule.window}
            count = f"at least {len(addresses)}" if len(addresses) == allowed + EVIDENCE_IDS else len(addresses)
            detail = f"{employee} used from {count} addresses within {rule.window} s (allowed {allowed})"
            self._fire("shared_login", rule.action, rule.window, employee, recent, detail, evidence, event, now, "high")

    def _probing(self, rules: SignalRules, employee: str, recent: _Recent, event: dict[str, Any], now: float) -> None:
        rule = rules.probing
        assert rule is not None
        refusals = recent.refusals
        refusals.append((now, str(event.get("reason")), str(event.get("decision_id", ""))))
        while refusals and now - refusals[0][0] > rule.window:
            refusals.popleft()
        while len(refusals) > rule.refusals + 1:
            refusals.popleft()
        if len(refusals) > rule.refusals:
            reasons: dict[str, int] = {}
            for _, reason, _ in refusals:
                reasons[reason] = reasons.get(reason, 0) + 1
            evidence = {
                "refusals": len(refusals),
                "reasons": reasons,
                "decision_ids": [d for _, _, d in list(refusals)[-EVIDENCE_IDS:]],
                "window_seconds": rule.window,
            }
            detail = f"{employee} was refused {len(refusals)} times within {rule.window} s"
            self._fire("probing", rule.action, rule.window, employee, recent, detail, evidence, event, now, "medium")

    def _enumeration(
        self, rules: SignalRules, employee: str, recent: _Recent, event: dict[str, Any], now: float
    ) -> None:
        rule = rules.enumeration
        assert rule is not None
        number = record_id(str(event.get("path", "")))
        if number is None:
            return
        records = recent.records
        records[number] = now
        if len(records) > rule.records:
            for number, seen in list(records.items()):
                if now - seen > rule.window:
                    del records[number]
        if len(records) > rule.records:
            evidence = {"distinct_records": len(records), "window_seconds": rule.window, **_run_of(records)}
            detail = f"{employee} asked for {len(records)} distinct records one by one within {rule.window} s"
            self._fire("enumeration", rule.action, rule.window, employee, recent, detail, evidence, event, now, "high")
            records.clear()

    def _fire(
        self,
        signal: str,
        action: Action,
        window: int,
        employee: str,
        recent: _Recent,
        detail: str,
        evidence: dict[str, Any],
        event: dict[str, Any],
        now: float,
        severity: Severity,
    ) -> None:
        if recent.fired.get(signal, 0.0) > now:
            return
        recent.fired[signal] = now + window
        evidence["last_decision_id"] = event.get("decision_id")
        self._on_flag(Flag(signal, employee, action, detail, evidence, now, severity))


def _run_of(records: dict[str, float]) -> dict[str, Any]:
    """The longest run of consecutive numbers among the records (same prefix); ids that
    do not end in a number (UUIDs) count as records but form no run."""
    numbers = sorted({(m[1], int(m[2])) for r in records if (m := _NUMBERED.match(r))})
    best = current = 1
    best_end = numbers[0] if numbers else ("", 0)
    for before, after in itertools.pairwise(numbers):
        current = current + 1 if after[0] == before[0] and after[1] == before[1] + 1 else 1
        if current > best:
            best, best_end = current, after
    prefix, end = best_end
    return {"longest_run": best, "run": f"{prefix}{end - best + 1}..{prefix}{end}" if numbers else ""}
