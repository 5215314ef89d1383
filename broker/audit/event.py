"""The canonical audit event: one per decision, allow and deny, never the token."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from broker.core.access import UNBOUNDED
from broker.core.decision import Decision


def decision_event(
    decision: Decision, *, door: str, status: int, returned: int, latency: float, **fields: Any
) -> dict[str, Any]:
    access, principal = decision.access, decision.principal
    quota = decision.quota
    event: dict[str, Any] = {
        "time": utc_iso(decision.started),
        "decision_id": decision.id,
        "door": door,
        "employee": decision.employee,
        "roles": list(principal.roles) if principal else [],
        "branches": list(principal.branches) if principal else [],
        "client": access.client,
        **fields,
        "resource": access.resource or None,
        "action": access.action or None,
        "record_branch": access.branch,
        "verdict": decision.verdict._value_,
        "reason": decision.reason._value_,
        "detail": decision.detail or None,
        "rule": decision.rule or None,
        "policy_revision": decision.revision or None,
        "records_requested": "unbounded" if access.records >= UNBOUNDED else access.records,
        "records_returned": returned,
        "records_charged": decision.reserved if decision.quota_key else 0,
        "quota_left": quota.remaining if quota else None,
        "probe": decision.probed,
        "meter": decision.metered or None,
        "status": status,
        "latency_ms": round(latency * 1000, 3),
    }
    if access.session is not None:  # identified by a browser sign-in session, not a token
        event["via"] = "session"
    if access.device is not None:  # the door requires device certificates
        event["device"] = decision.device or (f"unregistered sha256:{access.device}" if access.device else None)
    return event


_last_second: tuple[int, str] = (-1, "")
"""The last whole second rendered and its text up to the seconds (replaced in one
assignment, so a reader on another thread never sees a half-updated pair)."""


def utc_iso(when: float) -> str:
    """`broker.core.clock.iso(when)` (UTC, `Z`, microseconds unless zero), character for
    character, with the date and time rendered once per second instead of per event.

    The fraction is rounded as `datetime.fromtimestamp` rounds it (half to even, on
    the float's fractional part, carrying into the next second)."""
    fraction, whole = math.modf(when)
    micro, second = round(fraction * 1e6), int(whole)
    if micro >= 1_000_000:
        micro, second = micro - 1_000_000, second + 1
    if micro < 0 or second < 0:  # before 1970: not a time a decision is made at
        return datetime.fromtimestamp(when, UTC).isoformat().replace("+00:00", "Z")
    global _last_second  # noqa: PLW0603 - a one-entry cache
    cached_second, text = _last_second
    if cached_second != second:
        text = datetime.fromtimestamp(second, UTC).isoformat()[:-6]
        _last_second = (second, text)
    return f"{text}.{micro:06d}Z" if micro else f"{text}Z"
