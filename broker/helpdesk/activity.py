"""What one broker knows of an employee's live use, for `broker helpdesk sessions`.

Each part says where it comes from, because replicas know different things: browser
sign-in sessions and freezes live in the counter store (shared by every replica with
Redis), while database sessions, addresses, devices and recent decisions are what *this*
replica served (the console's digest of its audit stream). Nothing here is taken from
an upstream's answer: it is the broker's own record of who connected and what it decided.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from broker.console.digest import Digest
from broker.console.page import live_cells
from broker.core.clock import iso
from broker.core.guard import Guard
from broker.core.window import freeze_key, quota_raise_key
from broker.helpdesk.quota import QuotaDesk
from broker.identity.session import SessionStore, SessionStoreUnavailable
from broker.meter.meter import Meter
from broker.meter.store import StoreUnavailable

RECENT_DECISIONS = 10
SESSION_ID_CHARS = 12
"""How much of a session's key (a SHA-256 of the cookie, never the cookie) is shown."""


class EmployeeActivity:
    def __init__(
        self,
        desk: QuotaDesk,
        guard: Guard,
        meter: Meter,
        digest: Digest,
        sessions: SessionStore | None,
        database_sessions: Callable[[str], int] | None,
    ) -> None:
        self._desk = desk
        self._guard = guard
        self._meter = meter
        self._digest = digest
        self._sessions = sessions
        self._database_sessions = database_sessions

    async def of(self, employee_id: str) -> dict[str, Any]:
        """The view of `employee_id` (UnknownEmployee when not on the roster)."""
        employee = self._desk.employee(employee_id)
        now = self._guard.clock.now()
        self._digest.catch_up(now)
        timeline = self._digest.timelines.get(employee.id)
        events = list(timeline.events) if timeline else []
        decisions = [e for e in events if e.get("event") in (None, "decision")]
        return {
            "employee": employee.id,
            "roles": sorted(employee.roles),
            "branches": sorted(employee.roles_by_branch),
            "shifts": [shift.name for shift in employee.shifts],
            "counters": "redis" if self._meter.shared else "memory",
            "frozen": await _answer(self._meter.store.get(freeze_key(employee.id), now), lambda n: n >= 1),
            "quotas": await self._quotas(employee.id, now),
            "browser_sessions": await self._browser_sessions(employee.id, now),
            "database_sessions": self._database_sessions(employee.id) if self._database_sessions else None,
            "addresses": [
                {"address": address, "first": seen.first, "last": seen.last, "requests": seen.requests}
                for address, seen in reversed(list(timeline.addresses.items()) if timeline else [])
            ],
            "devices": _devices(decisions),
            "recent_decisions": [_decision(e) for e in reversed(decisions[-RECENT_DECISIONS:])],
            "actions": [
                {k: e.get(k) for k in ("time", "action", "operator", "reason")}
                for e in reversed(events)
                if e.get("event") == "console"
            ][:RECENT_DECISIONS],
        }

    async def _quotas(self, employee_id: str, now: float) -> list[dict[str, Any]]:
        employee = self._desk.employee(employee_id)
        states = await self._guard.quotas_of(employee)  # the raise is in their limit already
        found = []
        for state in states:
            key = quota_raise_key(employee.id, state.name)
            raised = await _answer(self._meter.store.get(key, now), int)
            left = await _answer(self._meter.store.expires_in(key, now), _seconds)
            found.append(
                {
                    "resource": state.name,
                    "limit": state.limit,
                    "used": state.used,
                    "remaining": state.remaining,
                    "resets_at": iso(state.reset_at, state.zone),
                    "raised": raised,
                    "raise_seconds_left": left if raised else None,
                }
            )
        return found

    async def _browser_sessions(self, employee_id: str, now: float) -> dict[str, Any] | None:
        if self._sessions is None:
            return None  # browser sign-in ([oidc]) is not configured
        try:
            found = await self._sessions.of_employee(employee_id, now)
        except SessionStoreUnavailable as exc:
            return {"store": "redis" if self._meter.shared else "memory", "error": str(exc), "sessions": []}
        return {
            "store": "redis" if self._meter.shared else "memory",
            "sessions": [
                {"id": s.key[:SESSION_ID_CHARS], "started": iso(s.started), "ends_at": iso(s.expires_at)} for s in found
            ],
        }


async def _answer(asked: Awaitable[Any], shown: Callable[[Any], Any]) -> Any:
    """A figure from the counter store, or "unavailable" when it cannot answer now."""
    try:
        return shown(await asked)
    except StoreUnavailable:
        return "unavailable"


def _seconds(value: float | None) -> int | None:
    return None if value is None else round(value)


def _devices(decisions: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The registered devices (or unregistered certificates) the decisions came through."""
    last: dict[str, str] = {}
    for event in decisions:
        device = event.get("device")
        if device:
            last[str(device)] = str(event.get("time", ""))
    return [{"device": device, "last": when} for device, when in sorted(last.items(), key=lambda item: item[1])]


def _decision(event: dict[str, Any]) -> dict[str, Any]:
    _, _, client, request, verdict, reason, returned = live_cells(event)
    return {
        "time": event.get("time"),
        "decision_id": event.get("decision_id"),
        "door": event.get("door"),
        "client": client,
        "request": request,
        "verdict": verdict,
        "reason": reason,
        "records": returned,
    }
